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
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ISTIO_VM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time();
    if istio_vm::logging::stderr_is_journal() {
        // Each line with its `<N>` priority prefix; journald adds the time.
        fmt.with_writer(istio_vm::logging::JournalMakeWriter)
            .with_ansi(false)
            .init();
    } else {
        fmt.with_writer(|| RedactedStderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
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
