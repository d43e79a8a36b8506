//! One function per subcommand. Each returns the report to print; `main`
//! maps it (or the error) to the exit code.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{Cli, Command, Output};
use crate::config::Config;
use crate::report::Report;

pub mod capture;
mod install;
mod validate;
mod verify;

/// What every command gets: the resolved root, the effective config.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `/` or the `--root` directory; every path goes through it.
    pub root: PathBuf,
    pub config: Config,
    pub verbose: u8,
}

impl Ctx {
    /// True when changing live system state (services, netfilter, users) is
    /// allowed: the root is `/` and `/` is the machine's (not a chroot).
    pub fn live(&self) -> bool {
        self.root == std::path::Path::new("/") && !crate::chroot::in_chroot()
    }
}

/// What validation allows beyond the defaults: config, then flags.
pub fn validate_options(ctx: &Ctx, args: &crate::cli::BundleArgs) -> crate::validate::Options {
    let mut allow_env = ctx.config.allow_env.clone();
    allow_env.extend(args.allow_env.iter().cloned());
    crate::validate::Options {
        allow_env,
        allow_ssh_capture: ctx.config.allow_ssh_capture,
    }
}

/// Name of the command, for the report of an error.
pub fn name(cmd: &Command) -> &'static str {
    match cmd {
        Command::Validate(_) => "validate",
        Command::Install(_) => "install",
        Command::Uninstall => "uninstall",
        Command::Verify(_) => "verify",
        Command::Capture(_) => "capture",
    }
}

/// Build the context (config layers, flags on top) and run the command.
pub fn run(cli: &Cli) -> Result<Report> {
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut config = Config::load(cli.global.config.as_deref(), &root)?;
    if let Some(o) = cli.global.output {
        config.output = o;
    }
    let ctx = Ctx {
        root,
        config,
        verbose: cli.global.verbose,
    };
    match &cli.command {
        Command::Validate(a) => validate::run(&ctx, a),
        Command::Install(a) => install::install(&ctx, a),
        Command::Uninstall => install::uninstall(&ctx),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Capture(a) => capture::run(&ctx, a),
    }
}

/// Output format chosen by flag, environment or config file.
pub fn output_of(cli: &Cli) -> Output {
    if let Some(o) = cli.global.output {
        return o;
    }
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/"));
    Config::load(cli.global.config.as_deref(), &root)
        .map(|c| c.output)
        .unwrap_or(Output::Text)
}
