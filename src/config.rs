//! `/etc/istio-vm/config.toml`, then `ISTIO_VM_*` environment, then flags
//! (DESIGN.md: defaults < file < environment < flags). Unknown keys are errors
//! so a typo never silently does nothing.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::cli::{Backend, Output, parse_duration};
use crate::error::Failure;

pub const DEFAULT_PATH: &str = "/etc/istio-vm/config.toml";

/// A config file is a few hundred bytes; anything near this is not one.
const CONFIG_CAP: u64 = 1 << 20;

/// The link-local instance metadata services (AWS, GCP, Azure, OpenStack
/// at 169.254.169.254; AWS's IPv6 endpoint): excluded from outbound
/// capture by default so that a crash-looping sidecar does not cut the
/// cloud agent off from its credentials.
pub const DEFAULT_EXCLUDE_OUTBOUND_CIDRS: [&str; 2] = ["169.254.169.254/32", "fd00:ec2::254/128"];

/// Effective settings after every layer is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub output: Output,
    /// Netfilter backend for capture.
    pub backend: Backend,
    /// Install and apply traffic capture (install `--no-capture` turns it off).
    pub capture: bool,
    /// Start services after install (`--no-start` turns it off).
    pub start: bool,
    /// Inbound ports never captured, on top of 22 and 15020 which always are excluded.
    pub exclude_inbound_ports: Vec<u16>,
    /// Allow rules that would capture inbound SSH (22). Off unless asked for.
    pub allow_ssh_capture: bool,
    /// Destinations never captured outbound (cloud metadata by default, so
    /// the cloud agent keeps its credentials while the sidecar is down).
    pub exclude_outbound_cidrs: Vec<String>,
    /// Dangerous cluster.env keys accepted anyway (`--allow-env` adds more).
    pub allow_env: Vec<String>,
    /// Total time a bundle download may take, connection to last byte.
    pub fetch_timeout: Duration,
    /// Per network step bound for verify.
    pub timeout: Duration,
    /// How long a run waits for another run's lock.
    pub lock_timeout: Duration,
    /// How often istio-vm-verify.timer runs verify (install writes it into
    /// the timer's drop-in).
    pub verify_interval: Duration,
    /// Where the timer's verify writes its metrics (`--textfile`).
    pub textfile: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            output: Output::Text,
            backend: Backend::Auto,
            capture: true,
            start: true,
            exclude_inbound_ports: Vec::new(),
            allow_ssh_capture: false,
            exclude_outbound_cidrs: DEFAULT_EXCLUDE_OUTBOUND_CIDRS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            allow_env: Vec::new(),
            fetch_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(3),
            lock_timeout: Duration::from_secs(300),
            verify_interval: Duration::from_secs(300),
            textfile: DEFAULT_TEXTFILE.to_string(),
        }
    }
}

/// The file layer: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    output: Option<Output>,
    backend: Option<Backend>,
    capture: Option<bool>,
    start: Option<bool>,
    exclude_inbound_ports: Option<Vec<u16>>,
    allow_ssh_capture: Option<bool>,
    exclude_outbound_cidrs: Option<Vec<String>>,
    allow_env: Option<Vec<String>>,
    fetch_timeout: Option<String>,
    timeout: Option<String>,
    lock_timeout: Option<String>,
    verify_interval: Option<String>,
    textfile: Option<String>,
}

impl<'de> Deserialize<'de> for Output {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "text" => Ok(Output::Text),
            "json" => Ok(Output::Json),
            other => Err(serde::de::Error::custom(format!(
                "unknown output `{other}`, expected `text` or `json`"
            ))),
        }
    }
}

/// Environment variables this layer reads. Kept explicit so an unknown
/// `ISTIO_VM_*` variable can be reported instead of ignored.
const ENV_KEYS: &[&str] = &[
    "ISTIO_VM_OUTPUT",
    "ISTIO_VM_BACKEND",
    "ISTIO_VM_CAPTURE",
    "ISTIO_VM_START",
    "ISTIO_VM_EXCLUDE_INBOUND_PORTS",
    "ISTIO_VM_ALLOW_SSH_CAPTURE",
    "ISTIO_VM_EXCLUDE_OUTBOUND_CIDRS",
    "ISTIO_VM_ALLOW_ENV",
    "ISTIO_VM_FETCH_TIMEOUT",
    "ISTIO_VM_TIMEOUT",
    "ISTIO_VM_LOCK_TIMEOUT",
    "ISTIO_VM_VERIFY_INTERVAL",
    "ISTIO_VM_TEXTFILE",
    // Read by clap directly.
    "ISTIO_VM_ROOT",
    "ISTIO_VM_CONFIG",
    // Log filter for stderr (tracing syntax).
    "ISTIO_VM_LOG",
    // Test-only failpoint (compiled in with the `failpoints` feature only).
    "ISTIO_VM_FAILPOINT",
];

impl Config {
    /// Load the file (if `explicit` is given it must exist; the default path
    /// may be absent), then overlay the environment.
    pub fn load(explicit: Option<&Path>, root: &Path) -> Result<Config> {
        let mut cfg = Config::default();
        // Both reads are bounded and refuse anything but a regular file
        // (`--config /dev/zero` or a FIFO must not hang or grow memory);
        // the default file is read inside the root, never through a link
        // out of it.
        let (shown, read) = match explicit {
            Some(p) => (
                p.display().to_string(),
                crate::sysroot::read_host_file(p, CONFIG_CAP)
                    .and_then(|b| b.ok_or_else(|| anyhow::anyhow!("no such file")).map(Some)),
            ),
            None => {
                let root = crate::sysroot::Sysroot::new(root)
                    .map_err(|e| Failure::Usage(format!("{e:#}")))?;
                (
                    root.host(DEFAULT_PATH).display().to_string(),
                    root.read_capped(DEFAULT_PATH, CONFIG_CAP),
                )
            }
        };
        match read {
            Ok(Some(bytes)) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| Failure::Usage(format!("{shown}: not UTF-8 text")))?;
                cfg.apply_file(&text)
                    .map_err(|e| Failure::Usage(format!("{shown}: {e:#}")))?
            }
            Ok(None) => {}
            Err(e) => {
                return Err(
                    Failure::Usage(format!("cannot read config file {shown}: {e:#}")).into(),
                );
            }
        }
        cfg.apply_env(std::env::vars())
            .map_err(|e| Failure::Usage(format!("{e:#}")))?;
        Ok(cfg)
    }

    pub fn apply_file(&mut self, text: &str) -> Result<()> {
        let layer: FileLayer = toml::from_str(text).context("invalid config")?;
        if let Some(v) = layer.output {
            self.output = v;
        }
        if let Some(v) = layer.backend {
            self.backend = v;
        }
        if let Some(v) = layer.capture {
            self.capture = v;
        }
        if let Some(v) = layer.start {
            self.start = v;
        }
        if let Some(v) = layer.exclude_inbound_ports {
            self.exclude_inbound_ports = v;
        }
        if let Some(v) = layer.allow_ssh_capture {
            self.allow_ssh_capture = v;
        }
        if let Some(v) = layer.exclude_outbound_cidrs {
            self.exclude_outbound_cidrs = v;
        }
        if let Some(v) = layer.allow_env {
            self.allow_env = v;
        }
        if let Some(v) = layer.fetch_timeout {
            self.fetch_timeout = parse_duration(&v)
                .map_err(anyhow::Error::msg)
                .context("fetch_timeout")?;
        }
        if let Some(v) = layer.timeout {
            self.timeout = parse_duration(&v)
                .map_err(anyhow::Error::msg)
                .context("timeout")?;
        }
        if let Some(v) = layer.lock_timeout {
            self.lock_timeout = parse_duration(&v)
                .map_err(anyhow::Error::msg)
                .context("lock_timeout")?;
        }
        if let Some(v) = layer.verify_interval {
            self.verify_interval = parse_interval(&v).context("verify_interval")?;
        }
        if let Some(v) = layer.textfile {
            self.textfile = check_textfile(&v).context("textfile")?;
        }
        Ok(())
    }

    pub fn apply_env(&mut self, vars: impl Iterator<Item = (String, String)>) -> Result<()> {
        for (k, v) in vars {
            if !k.starts_with("ISTIO_VM_") {
                continue;
            }
            let ctx = || format!("environment variable {k}={v}");
            match k.as_str() {
                "ISTIO_VM_OUTPUT" => {
                    self.output = match v.as_str() {
                        "text" => Output::Text,
                        "json" => Output::Json,
                        _ => bail!("{}: expected `text` or `json`", ctx()),
                    }
                }
                "ISTIO_VM_BACKEND" => {
                    self.backend = match v.as_str() {
                        "auto" => Backend::Auto,
                        "iptables" => Backend::Iptables,
                        "nftables" => Backend::Nftables,
                        _ => bail!("{}: expected auto, iptables or nftables", ctx()),
                    }
                }
                "ISTIO_VM_CAPTURE" => self.capture = parse_bool(&v).with_context(ctx)?,
                "ISTIO_VM_START" => self.start = parse_bool(&v).with_context(ctx)?,
                "ISTIO_VM_ALLOW_SSH_CAPTURE" => {
                    self.allow_ssh_capture = parse_bool(&v).with_context(ctx)?
                }
                "ISTIO_VM_EXCLUDE_OUTBOUND_CIDRS" => {
                    self.exclude_outbound_cidrs = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                }
                "ISTIO_VM_EXCLUDE_INBOUND_PORTS" => {
                    self.exclude_inbound_ports = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|p| {
                            p.parse::<u16>()
                                .with_context(|| format!("{}: bad port `{p}`", ctx()))
                        })
                        .collect::<Result<_>>()?;
                }
                "ISTIO_VM_ALLOW_ENV" => {
                    self.allow_env = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "ISTIO_VM_FETCH_TIMEOUT" => {
                    self.fetch_timeout = parse_duration(&v)
                        .map_err(anyhow::Error::msg)
                        .with_context(ctx)?
                }
                "ISTIO_VM_TIMEOUT" => {
                    self.timeout = parse_duration(&v)
                        .map_err(anyhow::Error::msg)
                        .with_context(ctx)?
                }
                "ISTIO_VM_LOCK_TIMEOUT" => {
                    self.lock_timeout = parse_duration(&v)
                        .map_err(anyhow::Error::msg)
                        .with_context(ctx)?
                }
                "ISTIO_VM_VERIFY_INTERVAL" => {
                    self.verify_interval = parse_interval(&v).with_context(ctx)?
                }
                "ISTIO_VM_TEXTFILE" => self.textfile = check_textfile(&v).with_context(ctx)?,
                k if ENV_KEYS.contains(&k) => {}
                _ => bail!(
                    "unknown environment variable {k}; known: {}",
                    ENV_KEYS.join(", ")
                ),
            }
        }
        Ok(())
    }
}

/// Debian's and Fedora's prometheus-node-exporter read textfiles here.
pub const DEFAULT_TEXTFILE: &str = "/var/lib/prometheus/node-exporter/istio_vm.prom";

/// The timer's interval: at least a second (a timer at 0 would spin).
fn parse_interval(v: &str) -> Result<Duration> {
    let d = parse_duration(v).map_err(anyhow::Error::msg)?;
    if d < Duration::from_secs(1) {
        bail!("`{v}` is shorter than 1s");
    }
    Ok(d)
}

/// An absolute path ending in `.prom` (the only files the textfile
/// collector reads), in characters a unit's command line carries unquoted.
fn check_textfile(v: &str) -> Result<String> {
    let ok_chars = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if !v.starts_with('/') || !v.ends_with(".prom") || !ok_chars || v.contains("/../") {
        bail!(
            "`{v}`: give an absolute path ending in .prom in the directory node_exporter's \
             --collector.textfile.directory names (letters, digits, / . _ - only)"
        );
    }
    Ok(v.to_string())
}

fn parse_bool(v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => bail!("expected true or false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env() {
        let mut c = Config::default();
        c.apply_file("backend = \"nftables\"\nexclude_inbound_ports = [2222]\ntimeout = \"5s\"\n")
            .unwrap();
        assert_eq!(c.backend, Backend::Nftables);
        assert_eq!(c.exclude_inbound_ports, vec![2222]);
        assert_eq!(c.timeout, Duration::from_secs(5));
        c.apply_env([("ISTIO_VM_BACKEND".to_string(), "iptables".to_string())].into_iter())
            .unwrap();
        assert_eq!(c.backend, Backend::Iptables);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let mut c = Config::default();
        let e = c.apply_file("bakend = \"nftables\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("bakend"), "{e:#}");
        let e = c
            .apply_env([("ISTIO_VM_BAKEND".to_string(), "x".to_string())].into_iter())
            .unwrap_err();
        assert!(format!("{e:#}").contains("ISTIO_VM_BAKEND"));
    }

    #[test]
    fn verify_timer_settings() {
        let mut c = Config::default();
        assert_eq!(c.verify_interval, Duration::from_secs(300));
        assert_eq!(c.textfile, DEFAULT_TEXTFILE);
        c.apply_file(
            "verify_interval = \"30s\"\ntextfile = \"/var/lib/node_exporter/istio_vm.prom\"\n",
        )
        .unwrap();
        assert_eq!(c.verify_interval, Duration::from_secs(30));
        assert_eq!(c.textfile, "/var/lib/node_exporter/istio_vm.prom");
        assert!(c.apply_file("verify_interval = \"500ms\"\n").is_err());
        for bad in [
            "x.prom",
            "/a/b.txt",
            "/a b/c.prom",
            "/a/\"c.prom",
            "/a/../c.prom",
        ] {
            assert!(
                c.apply_file(&format!("textfile = '{bad}'\n")).is_err(),
                "{bad}"
            );
        }
        c.apply_env([("ISTIO_VM_VERIFY_INTERVAL".to_string(), "2m".to_string())].into_iter())
            .unwrap();
        assert_eq!(c.verify_interval, Duration::from_secs(120));
    }

    #[test]
    fn bad_values_are_errors() {
        let mut c = Config::default();
        assert!(c.apply_file("timeout = \"3\"\n").is_err());
        assert!(c.apply_file("capture = \"yes\"\n").is_err());
        assert!(
            c.apply_env([("ISTIO_VM_CAPTURE".to_string(), "maybe".to_string())].into_iter())
                .is_err()
        );
    }
}
