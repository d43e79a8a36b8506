//! `verify --textfile`: the checks of one run as a Prometheus text-format
//! file for node_exporter's textfile collector. Pure: [`Facts::gather`] takes
//! what was read, [`render`] returns the file's bytes; the command writes it.
//!
//! The metric names and labels are a public contract (README "Monitoring"):
//! add, never rename. Nothing secret goes in: the token's expiry, never the
//! token.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::files;
use super::inputs::Inputs;
use crate::report::{Check, CheckStatus};

/// What the file says besides the checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// When the run finished, seconds since the epoch.
    pub now: f64,
    /// `notAfter` of the agent's workload certificate (`OUTPUT_CERTS`).
    pub workload_cert_expiry: Option<i64>,
    /// The earliest `notAfter` among the certificates of root-cert.pem.
    pub root_cert_expiry: Option<i64>,
    /// The token's `exp` claim.
    pub token_expiry: Option<i64>,
    pub info: Info,
}

/// The labels of `istio_vm_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// istio-vm's own version.
    pub version: String,
    /// Version of the installed `istio-sidecar` package, empty if unknown.
    pub istio_version: String,
    pub cluster_id: String,
    pub network: String,
    pub namespace: String,
    pub service_account: String,
}

impl Facts {
    /// From the files one verify attempt read and the dpkg status database
    /// (for the sidecar's version), at `now`.
    pub fn gather(inputs: &Inputs, dpkg_status: Option<&[u8]>, now: f64) -> Facts {
        let env = |k: &str| inputs.env.get(k).cloned().unwrap_or_default();
        let certs_expiry = |pem: &[u8], earliest: bool| {
            let certs = files::parse_pem_certs(pem).ok()?;
            if earliest {
                certs.iter().map(|(c, _)| c.not_after).min()
            } else {
                certs.first().map(|(c, _)| c.not_after)
            }
        };
        let namespace = match env("POD_NAMESPACE") {
            ns if ns.is_empty() => env("ISTIO_NAMESPACE"),
            ns => ns,
        };
        Facts {
            now,
            workload_cert_expiry: inputs
                .workload
                .as_ref()
                .and_then(|(cert, _)| certs_expiry(cert, false)),
            root_cert_expiry: inputs
                .root_cert_pem
                .as_deref()
                .and_then(|p| certs_expiry(p, true)),
            token_expiry: inputs
                .token
                .as_deref()
                .and_then(|t| files::decode_claims(t).ok())
                .and_then(|c| c.exp),
            info: Info {
                version: env!("CARGO_PKG_VERSION").to_string(),
                istio_version: dpkg_status
                    .and_then(|s| package_version(s, SIDECAR_PACKAGE))
                    .unwrap_or_default(),
                cluster_id: env("ISTIO_META_CLUSTER_ID"),
                network: env("ISTIO_META_NETWORK"),
                namespace,
                service_account: env("SERVICE_ACCOUNT"),
            },
        }
    }
}

/// Istio's VM package (tools/packaging/packaging.mk, 1.29.6).
pub const SIDECAR_PACKAGE: &str = "istio-sidecar";

/// The version of an installed package in dpkg's status file
/// (`/var/lib/dpkg/status`, deb822 stanzas).
pub fn package_version(status: &[u8], package: &str) -> Option<String> {
    let text = String::from_utf8_lossy(status);
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        (field("Package") == Some(package)
            && field("Status").is_some_and(|s| s.ends_with(" installed")))
        .then(|| field("Version").map(str::to_string))
        .flatten()
    })
}

const STATES: [(CheckStatus, &str); 4] = [
    (CheckStatus::Pass, "pass"),
    (CheckStatus::Warn, "warn"),
    (CheckStatus::Fail, "fail"),
    (CheckStatus::Skip, "skip"),
];

/// The text-format file (version 0.0.4) for one run's checks.
pub fn render(checks: &[Check], facts: &Facts) -> String {
    // One series per check id: a repeated id (never expected) would make the
    // scrape fail as a duplicate.
    let mut seen = BTreeSet::new();
    let checks: Vec<&Check> = checks
        .iter()
        .filter(|c| seen.insert(c.id.as_str()))
        .collect();
    let mut out = String::new();
    let head = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
    };

    head(
        &mut out,
        "istio_vm_verify_success",
        "1 when no istio-vm verify check failed in the last run, else 0.",
    );
    let ok = checks.iter().all(|c| c.status != CheckStatus::Fail);
    let _ = writeln!(out, "istio_vm_verify_success {}", u8::from(ok));

    head(
        &mut out,
        "istio_vm_verify_last_run_timestamp_seconds",
        "When the last istio-vm verify run finished, in seconds since the epoch.",
    );
    let _ = writeln!(
        out,
        "istio_vm_verify_last_run_timestamp_seconds {}",
        seconds(facts.now)
    );

    head(
        &mut out,
        "istio_vm_check_status",
        "Status of each istio-vm verify check: 1 for its current status, 0 for the others.",
    );
    for c in &checks {
        for (st, name) in STATES {
            let _ = writeln!(
                out,
                "istio_vm_check_status{{check=\"{}\",status=\"{name}\"}} {}",
                escape(&c.id),
                u8::from(c.status == st)
            );
        }
    }

    head(
        &mut out,
        "istio_vm_check_duration_seconds",
        "How long each istio-vm verify check took in the last run.",
    );
    for c in &checks {
        let _ = writeln!(
            out,
            "istio_vm_check_duration_seconds{{check=\"{}\"}} {}",
            escape(&c.id),
            seconds(c.elapsed_ms as f64 / 1000.0)
        );
    }

    for (name, value, help) in [
        (
            "istio_vm_workload_cert_expiry_timestamp_seconds",
            facts.workload_cert_expiry,
            "When the sidecar's workload certificate expires, in seconds since the epoch.",
        ),
        (
            "istio_vm_root_cert_expiry_timestamp_seconds",
            facts.root_cert_expiry,
            "When the earliest certificate of root-cert.pem expires, in seconds since the epoch.",
        ),
        (
            "istio_vm_token_expiry_timestamp_seconds",
            facts.token_expiry,
            "When the istio-token expires (its exp claim), in seconds since the epoch.",
        ),
    ] {
        if let Some(v) = value {
            head(&mut out, name, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }

    head(
        &mut out,
        "istio_vm_info",
        "Versions and workload identity of this VM; always 1.",
    );
    let i = &facts.info;
    let _ = writeln!(
        out,
        "istio_vm_info{{version=\"{}\",istio_version=\"{}\",cluster_id=\"{}\",network=\"{}\",namespace=\"{}\",service_account=\"{}\"}} 1",
        escape(&i.version),
        escape(&i.istio_version),
        escape(&i.cluster_id),
        escape(&i.network),
        escape(&i.namespace),
        escape(&i.service_account),
    );
    out
}

/// Millisecond precision, no exponent, no trailing zeros.
fn seconds(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// A label value as the text format quotes it: `\`, `"` and newline escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, status: CheckStatus, ms: u64) -> Check {
        Check {
            id: id.into(),
            status,
            detail: String::new(),
            elapsed_ms: ms,
            hint: None,
        }
    }

    fn facts() -> Facts {
        Facts {
            now: 1_764_900_000.25,
            workload_cert_expiry: Some(1_765_000_000),
            root_cert_expiry: None,
            token_expiry: Some(1_764_903_600),
            info: Info {
                version: "0.1.0".into(),
                istio_version: "1.29.6".into(),
                cluster_id: "Kubernetes".into(),
                network: "vm\"net".into(),
                namespace: "bookinfo".into(),
                service_account: "ratings".into(),
            },
        }
    }

    #[test]
    fn state_set_and_success() {
        let checks = [
            check("files.token", CheckStatus::Pass, 1),
            check("xds.stream", CheckStatus::Fail, 1500),
            check("xds.stream", CheckStatus::Pass, 1),
        ];
        let text = render(&checks, &facts());
        assert!(text.contains("istio_vm_verify_success 0\n"));
        assert!(text.contains("istio_vm_verify_last_run_timestamp_seconds 1764900000.25\n"));
        for (st, v) in [("pass", 0), ("warn", 0), ("fail", 1), ("skip", 0)] {
            let line =
                format!("istio_vm_check_status{{check=\"xds.stream\",status=\"{st}\"}} {v}\n");
            assert_eq!(text.matches(&line).count(), 1, "{line}");
        }
        assert!(text.contains("istio_vm_check_duration_seconds{check=\"xds.stream\"} 1.5\n"));
        assert!(text.contains("istio_vm_check_duration_seconds{check=\"files.token\"} 0.001\n"));
        let ok = render(&checks[..1], &facts());
        assert!(ok.contains("istio_vm_verify_success 1\n"));
    }

    #[test]
    fn expiries_only_when_known_and_labels_escaped() {
        let text = render(&[], &facts());
        assert!(text.contains("istio_vm_workload_cert_expiry_timestamp_seconds 1765000000\n"));
        assert!(text.contains("istio_vm_token_expiry_timestamp_seconds 1764903600\n"));
        assert!(!text.contains("istio_vm_root_cert_expiry"));
        assert!(text.contains(
            "istio_vm_info{version=\"0.1.0\",istio_version=\"1.29.6\",cluster_id=\"Kubernetes\",\
             network=\"vm\\\"net\",namespace=\"bookinfo\",service_account=\"ratings\"} 1\n"
        ));
        // Every metric has its HELP and TYPE, each once.
        let names: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        for n in names {
            assert_eq!(text.matches(&format!("# HELP {n} ")).count(), 1, "{n}");
            assert_eq!(
                text.matches(&format!("# TYPE {n} gauge\n")).count(),
                1,
                "{n}"
            );
        }
    }

    #[test]
    fn seconds_format() {
        assert_eq!(seconds(0.0), "0");
        assert_eq!(seconds(2.0), "2");
        assert_eq!(seconds(0.0125), "0.013");
        assert_eq!(escape("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn dpkg_version_of_installed_packages_only() {
        let status = b"Package: istio-sidecar\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
Package: other\nStatus: install ok installed\nVersion: 2\n\n\
Package: istio-sidecar\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.29.6\n";
        assert_eq!(
            package_version(status, SIDECAR_PACKAGE).as_deref(),
            Some("1.29.6")
        );
        assert_eq!(
            package_version(b"Package: istio-sidecar\n", SIDECAR_PACKAGE),
            None
        );
    }
}
