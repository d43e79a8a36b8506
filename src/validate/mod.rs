//! Per-file and cross-file checks of a bundle -> findings. Pure: the time is
//! passed in, nothing is read from the system.
//!
//! Severity follows DESIGN.md: warnings are the findings a working VM can
//! have (a token about to expire, a name DNS may still resolve, Istio 1.10's
//! known gaps that istio-vm's own capture rules close); everything else is an
//! error that would stop the sidecar from joining the mesh.
//!
//! One submodule per area: `cert_token` (root-cert.pem, istio-token), `keys`
//! (which cluster.env names exist), `env` (cluster.env values), `shell` (the
//! values Istio's start script pastes into a shell command line, and the
//! variables that change how that shell or the loader behave), `mesh_hosts`
//! (mesh.yaml, hosts).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::bundle::hosts::{self, HostEntry};
use crate::bundle::mesh_config::MeshConfig;
use crate::bundle::root_cert::{self, CertInfo};
use crate::bundle::token::Claims;
use crate::bundle::{Bundle, CLUSTER_ENV, ClusterEnv, FILES, HOSTS, MESH, ROOT_CERT, TOKEN};
use crate::report::Finding;

mod cert_token;
mod env;
mod keys;
mod mesh_hosts;
pub mod shell;

pub use keys::{KNOWN_KEYS, KNOWN_PREFIXES, REQUIRED_KEYS, suggest};

/// What the operator allows beyond the defaults (flags and config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// cluster.env keys accepted although dangerous (`--allow-env KEY`):
    /// loader and shell variables, `EXEC_USER` other than istio-proxy.
    pub allow_env: Vec<String>,
    /// `allow_ssh_capture` of the config: ISTIO_INBOUND_PORTS may list 22.
    pub allow_ssh_capture: bool,
}

/// Certificates with less than this left are `cert.expires_soon`.
pub const CERT_SOON_SECS: i64 = 30 * 86_400;
/// Tokens with less than this left are `token.expires_soon`.
pub const TOKEN_SOON_SECS: i64 = 10 * 60;
/// Clock skew tolerated before "not yet valid": a token is issued (nbf = now
/// on the API server) seconds before it is checked here, and istiod checks it
/// with the API server's clock, not ours.
pub const SKEW_SECS: i64 = 60;

/// Every bundle file, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub cluster_env: ClusterEnv,
    pub mesh: MeshConfig,
    pub certs: Vec<CertInfo>,
    pub claims: Claims,
    pub hosts: Vec<HostEntry>,
}

/// The findings, and the parsed files when every file could be parsed (there
/// may still be error findings: check them before using `parsed`).
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub findings: Vec<Finding>,
    pub parsed: Option<Parsed>,
}

impl Validation {
    pub fn has_errors(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == crate::report::Severity::Error)
    }
}

pub(crate) const HINT_REGENERATE_BUNDLE: &str = "regenerate the bundle: `istioctl x workload entry \
    configure -f workloadgroup.yaml -o DIR` (add --clusterID, --autoregister, --ingressIP as \
    before)";
pub(crate) const HINT_NEW_TOKEN: &str = "generate a fresh token: re-run `istioctl x workload entry \
    configure -f workloadgroup.yaml -o DIR --tokenDuration 86400` and use the new istio-token";
const HINT_ENV_QUOTE: &str = "write each line as KEY='value' (as istioctl does; a `'` inside \
    is written '\"'\"'); the file is sourced by bash";

pub(crate) fn time_text(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {t}"))
}

/// Rough "in 3d 4h" text for messages.
pub(crate) fn span_text(secs: i64) -> String {
    let s = secs.unsigned_abs();
    if s >= 86_400 {
        format!("{}d {}h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Check a bundle at time `now`, with the default options.
pub fn validate(bundle: &Bundle, now: OffsetDateTime) -> Validation {
    validate_with(bundle, now, &Options::default())
}

/// Check a bundle at time `now`.
pub fn validate_with(bundle: &Bundle, now: OffsetDateTime, opts: &Options) -> Validation {
    let now = now.unix_timestamp();
    let mut f = Vec::new();
    for name in FILES {
        if bundle.file(name).is_none() {
            f.push(Finding::error(
                "bundle.missing_file",
                Some(name),
                format!("{name} is missing from the bundle"),
                format!(
                    "istioctl writes all five files (cluster.env, mesh.yaml, root-cert.pem, \
                     istio-token, hosts); copy {name} too, or {HINT_REGENERATE_BUNDLE}"
                ),
            ));
        }
    }

    let env = bundle
        .file(CLUSTER_ENV)
        .and_then(|b| match ClusterEnv::parse(b) {
            Ok(env) => Some(env),
            Err(e) => {
                f.push(Finding::error(
                    "env.syntax",
                    Some(CLUSTER_ENV),
                    e.to_string(),
                    HINT_ENV_QUOTE,
                ));
                None
            }
        });
    let mesh = bundle.file(MESH).and_then(|b| match MeshConfig::parse(b) {
        Ok(m) => Some(m),
        Err(e) => {
            f.push(Finding::error(
                "mesh.parse",
                Some(MESH),
                e.to_string(),
                format!(
                    "mesh.yaml must be YAML with a `defaultConfig` map (proxyMetadata, \
                     discoveryAddress, ...); {HINT_REGENERATE_BUNDLE}"
                ),
            ));
            None
        }
    });
    let certs = bundle
        .file(ROOT_CERT)
        .and_then(|b| match root_cert::parse(b) {
            Ok(c) => Some(c),
            Err(e) => {
                f.push(Finding::error(
                    "cert.parse",
                    Some(ROOT_CERT),
                    e.to_string(),
                    "root-cert.pem must hold the mesh root CA as PEM CERTIFICATE blocks: take \
                 `root-cert.pem` from configmap istio-ca-root-cert in the workload's namespace, \
                 or regenerate the bundle",
                ));
                None
            }
        });
    let claims = bundle.file(TOKEN).and_then(|b| match Claims::decode(b) {
        Ok(c) => Some(c),
        Err(e) => {
            f.push(Finding::error(
                "token.format",
                Some(TOKEN),
                format!("not a JWT: {e}"),
                HINT_NEW_TOKEN,
            ));
            None
        }
    });
    let host_entries = bundle.file(HOSTS).and_then(|b| {
        let parsed = std::str::from_utf8(b)
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|t| hosts::parse(t).map_err(|e| e.to_string()));
        match parsed {
            Ok(h) => Some(h),
            Err(e) => {
                f.push(Finding::error(
                    "hosts.syntax",
                    Some(HOSTS),
                    e,
                    "each line is `<IP address> <host name>`, e.g. `203.0.113.10 \
                     istiod.istio-system.svc`; an east-west gateway with only a DNS name \
                     needs its IP (istioctl --ingressIP) or no hosts line at all",
                ));
                None
            }
        }
    });

    if let Some(c) = &certs {
        cert_token::check_certs(c, now, &mut f);
    }
    if let Some(c) = &claims {
        cert_token::check_token(c, env.as_ref(), now, &mut f);
    }
    if let Some(e) = &env {
        env::check_env(e, mesh.as_ref(), opts, &mut f);
        shell::check(e, opts, &mut f);
    }
    if let Some(m) = &mesh {
        mesh_hosts::check_mesh(m, env.as_ref(), &mut f);
    }
    if let Some(b) = bundle.file(HOSTS) {
        mesh_hosts::check_markers(b, &mut f);
    }
    if let Some(h) = &host_entries {
        mesh_hosts::check_hosts(h, mesh.as_ref(), env.as_ref(), &mut f);
    }

    let parsed = match (env, mesh, certs, claims, host_entries) {
        (Some(cluster_env), Some(mesh), Some(certs), Some(claims), Some(hosts)) => Some(Parsed {
            cluster_env,
            mesh,
            certs,
            claims,
            hosts,
        }),
        _ => None,
    };
    Validation {
        findings: f,
        parsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_change_unit_at_exact_limits() {
        assert_eq!(span_text(59), "59s");
        assert_eq!(span_text(60), "1m 0s");
        assert_eq!(span_text(3599), "59m 59s");
        assert_eq!(span_text(3600), "1h 0m");
        assert_eq!(span_text(86_399), "23h 59m");
        assert_eq!(span_text(86_400), "1d 0h");
        assert_eq!(span_text(-(2 * 86_400 + 3 * 3600 + 59)), "2d 3h");
    }

    #[test]
    fn times_are_rfc3339_or_raw() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_text(i64::MAX), format!("unix time {}", i64::MAX));
    }

    fn good_bundle() -> Bundle {
        use base64::Engine;
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = time::macros::datetime!(2020-01-01 0:00 UTC);
        p.not_after = time::macros::datetime!(2040-01-01 0:00 UTC);
        let cert = p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem();
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"aud":["istio-ca"],"sub":"system:serviceaccount:ns:sa","exp":2200000000}"#),
            enc("sig")
        );
        let env = "ISTIO_NAMESPACE='ns'\nISTIO_SERVICE='svc.ns'\nPOD_NAMESPACE='ns'\n\
                   SERVICE_ACCOUNT='sa'\nISTIO_INBOUND_PORTS='8080'\n\
                   ISTIO_LOCAL_EXCLUDE_PORTS='15090,15021,15020'\nISTIO_SERVICE_CIDR='*'\n";
        let mut b = Bundle::default();
        for (name, content) in [
            (CLUSTER_ENV, env.to_string()),
            (
                MESH,
                "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n".into(),
            ),
            (ROOT_CERT, cert),
            (TOKEN, token),
            (HOSTS, "203.0.113.10 istiod.istio-system.svc\n".into()),
        ] {
            b.files.insert(name.into(), content.into_bytes());
        }
        b
    }

    #[test]
    fn a_whole_bundle_is_parsed_and_a_missing_file_named() {
        let now = time::macros::datetime!(2026-01-01 0:00 UTC);
        let good = good_bundle();
        let v = validate(&good, now);
        assert!(!v.has_errors(), "{:?}", v.findings);
        let parsed = v.parsed.unwrap();
        assert_eq!(parsed.cluster_env.get("SERVICE_ACCOUNT"), Some("sa"));
        assert_eq!(parsed.hosts.len(), 1);
        for name in FILES {
            let mut b = good.clone();
            b.files.remove(name);
            let v = validate(&b, now);
            assert!(v.parsed.is_none(), "{name}");
            let missing: Vec<_> = v
                .findings
                .iter()
                .filter(|f| f.code == "bundle.missing_file")
                .map(|f| f.file.as_deref())
                .collect();
            assert_eq!(missing, [Some(name)]);
        }
    }

    #[test]
    fn only_errors_count_as_errors() {
        let warn = Finding::warning("token.expires_soon", None, "m", "h");
        let err = Finding::error("token.expired", None, "m", "h");
        let v = |findings| Validation {
            findings,
            parsed: None,
        };
        assert!(!v(vec![]).has_errors());
        assert!(!v(vec![warn.clone()]).has_errors());
        assert!(v(vec![warn, err]).has_errors());
    }
}
