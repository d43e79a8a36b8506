use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use istio_vm::cli::{Cli, Output};
use istio_vm::commands;
use istio_vm::error::{Exit, exit_for, report_of};
use istio_vm::report::Report;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
                    .write_all(report.to_text().as_bytes());
                rules
            }
            None => report.to_text(),
        },
    };
    // A closed stdout (e.g. `| head`) must not turn into a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::from(exit as u8)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISTIO_VM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}
