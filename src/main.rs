use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use istio_vm::cli::{Cli, Output};
use istio_vm::commands;
use istio_vm::config::Config;
use istio_vm::error::{Exit, exit_for, report_of};
use istio_vm::report::{Report, redact_urls_in};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.global.verbose);
    let output = commands::output_of(&cli);
    let (mut report, exit) = match commands::run(&cli) {
        Ok(report) => {
            let exit = if report.ok { Exit::Ok } else { Exit::NotOk };
            (report, exit)
        }
        Err(err) => {
            let mut report =
                report_of(&err).unwrap_or_else(|| Report::new(commands::name(&cli.command)));
            report.ok = false;
            report.changed = false;
            // The attached report already says which command stopped.
            let root_cause = match report_of(&err) {
                Some(_) => err
                    .chain()
                    .skip(1)
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(": "),
                None => format!("{err:#}"),
            };
            // Under systemd, the journal gets the error at its priority.
            istio_vm::logging::error_line(&root_cause);
            report.error = Some(root_cause);
            (report, exit_for(&err))
        }
    };
    let text = match output {
        Output::Json => report.to_json() + "\n",
        // `capture render`: the rules alone on stdout (so they pipe into
        // iptables-restore / nft), the report on stderr.
        Output::Text => match report.rules.take() {
            Some(rules) => {
                let _ = std::io::stderr()
                    .lock()
                    .write_all(redact_urls_in(&report.to_text()).as_bytes());
                rules
            }
            None => report.to_text(),
        },
    };
    print(&text);
    ExitCode::from(exit as u8)
}

fn print(text: &str) {
    // A closed stdout (e.g. `| head`) must not turn into a panic.
    let _ = std::io::stdout()
        .lock()
        .write_all(redact_urls_in(text).as_bytes());
}

/// clap refused the command line. Help and version are not failures; any
/// other refusal is exit 2 and, when JSON output is chosen (flag,
/// environment or config), the one JSON document automation expects.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if output_of_args(&args) != Output::Json {
        let _ = e.print();
        return ExitCode::from(Exit::Usage as u8);
    }
    let mut report = Report::new(command_of_args(&args));
    report.ok = false;
    report.error = Some(e.render().to_string().trim_end().to_string());
    print(&(report.to_json() + "\n"));
    ExitCode::from(Exit::Usage as u8)
}

/// The value of a global option in a command line clap refused: `--NAME V`
/// or `--NAME=V`, the last one winning as with clap.
fn option_of_args(args: &[OsString], name: &str) -> Option<OsString> {
    let long = format!("--{name}");
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(a) = a.to_str() else { continue };
        if a == "--" {
            break;
        }
        if a == long {
            found = it.next().cloned();
        } else if let Some(v) = a.strip_prefix(&long).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.into());
        }
    }
    found
}

/// The output format as the layers would have chosen it: flag, environment
/// (through the config layers), config file.
fn output_of_args(args: &[OsString]) -> Output {
    match option_of_args(args, "output")
        .as_ref()
        .and_then(|o| o.to_str())
    {
        Some("json") => return Output::Json,
        Some("text") => return Output::Text,
        _ => {}
    }
    if let Ok(v) = std::env::var("ISTIO_VM_OUTPUT") {
        return if v == "json" {
            Output::Json
        } else {
            Output::Text
        };
    }
    let path = |flag: &str, env: &str| {
        option_of_args(args, flag)
            .or_else(|| std::env::var_os(env))
            .map(PathBuf::from)
    };
    let root = path("root", "ISTIO_VM_ROOT").unwrap_or_else(|| PathBuf::from("/"));
    Config::load(path("config", "ISTIO_VM_CONFIG").as_deref(), &root)
        .map(|c| c.output)
        .unwrap_or(Output::Text)
}

/// The subcommand named on a refused command line, for the report.
fn command_of_args(args: &[OsString]) -> &'static str {
    for a in args {
        match a.to_str() {
            Some("validate") => return "validate",
            Some("install") => return "install",
            Some("uninstall") => return "uninstall",
            Some("verify") => return "verify",
            Some("capture") => return "capture",
            _ => {}
        }
    }
    "istio-vm"
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = std::env::var("ISTIO_VM_LOG")
        .ok()
        .and_then(|v| log_filter(&v))
        .unwrap_or_else(|| Targets::new().with_default(level));
    let fmt = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_target(false)
        .without_time();
    if istio_vm::logging::stderr_is_journal() {
        // Each line with its `<N>` priority prefix; journald adds the time.
        fmt.with_writer(istio_vm::logging::JournalMakeWriter)
            .with_ansi(false)
            .finish()
            .with(filter)
            .init();
    } else {
        fmt.with_writer(|| RedactedStderr)
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .init();
    }
}

/// ISTIO_VM_LOG: a level (`debug`) or `target=level` directives separated by
/// commas (`warn,h2=debug`), read as tracing's EnvFilter reads them (an
/// empty value means errors only). `Targets`, not `EnvFilter`: the latter
/// pulls a regex engine (about 315 KiB of the binary) for span and field
/// directives nobody needs here. None: not a valid filter.
fn log_filter(v: &str) -> Option<tracing_subscriber::filter::Targets> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let items: Vec<&str> = v.split(',').filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Some(Targets::new().with_default(LevelFilter::ERROR));
    }
    items.join(",").parse().ok()
}

/// stderr for log lines, with URL credentials redacted like stdout (one
/// tracing event arrives as one write).
struct RedactedStderr;

impl Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact_urls_in(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn log_filter_reads_levels_and_target_directives() {
        let f = log_filter("debug").unwrap();
        assert!(f.would_enable("istio_vm::capture", &tracing::Level::DEBUG));
        assert!(!f.would_enable("istio_vm::capture", &tracing::Level::TRACE));

        let f = log_filter("warn,,h2=trace").unwrap();
        assert!(f.would_enable("h2::proto", &tracing::Level::TRACE));
        assert!(f.would_enable("istio_vm", &tracing::Level::WARN));
        assert!(!f.would_enable("istio_vm", &tracing::Level::INFO));

        // Only the named target, as EnvFilter: everything else is off.
        let f = log_filter("istio_vm=info").unwrap();
        assert!(f.would_enable("istio_vm::verify", &tracing::Level::INFO));
        assert!(!f.would_enable("h2", &tracing::Level::ERROR));

        // Empty: errors only (EnvFilter's default directive).
        let f = log_filter("").unwrap();
        assert_eq!(f.default_level(), Some(LevelFilter::ERROR));

        assert!(log_filter("a=b=c").is_none());
        assert!(log_filter("istio_vm=loud").is_none());
    }
}
