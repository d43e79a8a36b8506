//! The user-facing command contract (DESIGN.md "Commands"). Tests and
//! automation depend on these names; add, never rename.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "istio-vm",
    version,
    about = "Onboard this virtual machine into an Istio service mesh",
    long_about = "Onboard this virtual machine into an Istio service mesh.\n\n\
        Takes the files `istioctl x workload entry configure` writes (cluster.env, \
        mesh.yaml, root-cert.pem, istio-token, hosts) and places them, captures \
        traffic and verifies the sidecar: idempotent, reversible, verifiable.",
    max_term_width = 80
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Prefix every path read or written; under a root other than / nothing
    /// live (services, netfilter, users) is changed
    #[arg(long, global = true, value_name = "DIR", env = "ISTIO_VM_ROOT")]
    pub root: Option<PathBuf>,
    /// Configuration file [default: /etc/istio-vm/config.toml]
    #[arg(long, global = true, value_name = "FILE", env = "ISTIO_VM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output format [default: text]
    #[arg(long, global = true, value_enum, env = "ISTIO_VM_OUTPUT")]
    pub output: Option<Output>,
    /// More log detail on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a bundle without changing anything
    Validate(ValidateArgs),
    /// Place the bundle, capture traffic and start the sidecar
    Install(InstallArgs),
    /// Restore everything install changed
    Uninstall,
    /// Explain whether the sidecar reaches istiod, and why not
    Verify(VerifyArgs),
    /// Traffic capture rules (iptables or nftables)
    Capture(CaptureArgs),
}

#[derive(Debug, Args, Clone)]
pub struct BundleArgs {
    /// Bundle: a directory, a .tar.gz of one, or an https:// URL
    #[arg(long, value_name = "SRC")]
    pub bundle: String,
    /// Expected SHA-256 of the archive (.tar.gz, URL) or the bundle digest
    /// (directory); required for a URL
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Accept this dangerous cluster.env variable (a loader or shell variable
    /// such as LD_LIBRARY_PATH, or EXEC_USER other than istio-proxy);
    /// repeatable. Shell syntax in a value is never accepted
    #[arg(long = "allow-env", value_name = "KEY")]
    pub allow_env: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Treat warnings as errors
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Show what would change; change nothing
    #[arg(long)]
    pub check: bool,
    /// Show a unified diff of every text file that changes (token redacted)
    #[arg(long)]
    pub diff: bool,
    /// Do not install or apply traffic capture rules
    #[arg(long)]
    pub no_capture: bool,
    /// Do not start or restart services
    #[arg(long)]
    pub no_start: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Repeat until every check passes or this much time has passed
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Bound on each network step [default: 3s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Do not check the local agent (istio.service, Envoy admin, DNS proxy)
    #[arg(long)]
    pub skip_agent: bool,
    /// Also fetch URL from this VM and check it went through the sidecar
    #[arg(long, value_name = "URL")]
    pub probe: Vec<String>,
    /// Also write the results as Prometheus metrics to FILE, for
    /// node_exporter's textfile collector (replaced atomically, mode 0644)
    #[arg(long, value_name = "FILE")]
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[arg(value_enum)]
    pub action: CaptureAction,
    /// Netfilter backend
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// apply: replace ISTIO_* chains (and Istio-named nft tables) that
    /// istio-vm's record does not name, i.e. another tool's
    #[arg(long)]
    pub replace_foreign: bool,
    /// render: which family's iptables-restore input to print on stdout
    #[arg(long, value_enum, default_value = "ipv4")]
    pub family: RenderFamily,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderFamily {
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureAction {
    /// Print the rules for this machine's cluster.env and resolv.conf
    Render,
    /// Apply the rules atomically, replacing any earlier Istio rules
    Apply,
    /// Remove the Istio rules istio-vm applied (as its record names them)
    Remove,
    /// Which backend holds which Istio rules, and whether they match
    Status,
    /// Keep the recorded rules in place while istio.service is active:
    /// re-apply within moments of a flush (nftables.service, firewalld,
    /// `iptables -F`); idle until netfilter changes
    Watch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Iptables,
    Nftables,
}

/// Longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `500ms`, `3s`, `2m`, `1h`, `1m30s`, systemd's `2min`: humantime's syntax
/// (which systemd.time(7) spans also parse). A bare number is refused: its
/// unit would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` has no unit: write e.g. 500ms, 3s, 2m or 1m30s"
        ));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}): write e.g. 500ms, 3s, 2m or 1m30s"))?;
    if d > MAX_DURATION {
        return Err(format!("`{s}` is out of range (at most 7 days)"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        // Issue 17: compound spans and systemd's unit names.
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_duration("1h 5min").unwrap(),
            Duration::from_secs(3900)
        );
        assert_eq!(parse_duration("7d").unwrap(), MAX_DURATION);
        assert!(parse_duration("8d").is_err());
    }
}
