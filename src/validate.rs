//! Per-file and cross-file checks of a bundle -> findings. Pure: the time is
//! passed in, nothing is read from the system.
//!
//! Severity follows DESIGN.md: warnings are the findings a working VM can
//! have (a token about to expire, a name DNS may still resolve, Istio 1.10's
//! known gaps that istio-vm's own capture rules close); everything else is an
//! error that would stop the sidecar from joining the mesh.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::bundle::hosts::{self, HostEntry};
use crate::bundle::mesh_config::{MeshConfig, split_host_port};
use crate::bundle::root_cert::{self, CertInfo};
use crate::bundle::token::{Claims, ISTIO_CA_AUDIENCE};
use crate::bundle::{Bundle, CLUSTER_ENV, ClusterEnv, FILES, HOSTS, MESH, ROOT_CERT, TOKEN};
use crate::report::Finding;

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

const HINT_REGENERATE_BUNDLE: &str = "regenerate the bundle: `istioctl x workload entry \
    configure -f workloadgroup.yaml -o DIR` (add --clusterID, --autoregister, --ingressIP as \
    before)";
const HINT_NEW_TOKEN: &str = "generate a fresh token: re-run `istioctl x workload entry \
    configure -f workloadgroup.yaml -o DIR --tokenDuration 86400` and use the new istio-token";
const HINT_ENV_QUOTE: &str = "write each line as KEY='value' (as istioctl does; a `'` inside \
    is written '\"'\"'); the file is sourced by bash";

fn time_text(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {t}"))
}

/// Rough "in 3d 4h" text for messages.
fn span_text(secs: i64) -> String {
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

/// Check a bundle at time `now`.
pub fn validate(bundle: &Bundle, now: OffsetDateTime) -> Validation {
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
        check_certs(c, now, &mut f);
    }
    if let Some(c) = &claims {
        check_token(c, env.as_ref(), now, &mut f);
    }
    if let Some(e) = &env {
        check_env(e, mesh.as_ref(), &mut f);
    }
    if let Some(m) = &mesh {
        check_mesh(m, env.as_ref(), &mut f);
    }
    if let Some(h) = &host_entries {
        check_hosts(h, mesh.as_ref(), env.as_ref(), &mut f);
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

fn check_certs(certs: &[CertInfo], now: i64, f: &mut Vec<Finding>) {
    let many = certs.len() > 1;
    for (i, c) in certs.iter().enumerate() {
        let which = if many {
            format!("certificate {} ({})", i + 1, c.subject)
        } else {
            format!("root certificate ({})", c.subject)
        };
        if c.not_after <= now {
            f.push(Finding::error(
                "cert.expired",
                Some(ROOT_CERT),
                format!("{which} expired at {}", time_text(c.not_after)),
                "the mesh root CA was rotated or this is an old bundle: take the current \
                 root-cert.pem from configmap istio-ca-root-cert (or regenerate the bundle)",
            ));
        } else if c.not_after - now < CERT_SOON_SECS {
            f.push(Finding::warning(
                "cert.expires_soon",
                Some(ROOT_CERT),
                format!(
                    "{which} expires at {} (in {})",
                    time_text(c.not_after),
                    span_text(c.not_after - now)
                ),
                "plan the root CA rotation: once istiod uses the new root, place the new \
                 root-cert.pem on this VM (re-run istio-vm install with a fresh bundle)",
            ));
        }
        if c.not_before > now + SKEW_SECS {
            f.push(Finding::error(
                "cert.not_yet_valid",
                Some(ROOT_CERT),
                format!(
                    "{which} is valid only from {} (in {})",
                    time_text(c.not_before),
                    span_text(c.not_before - now)
                ),
                "check this VM's clock (timedatectl; enable NTP): it is behind the CA's \
                 clock, and TLS to istiod will fail until it is right",
            ));
        }
        if !c.is_ca {
            f.push(Finding::error(
                "cert.not_ca",
                Some(ROOT_CERT),
                format!("{which} is not a CA certificate (basicConstraints CA is not set)"),
                "root-cert.pem must hold the mesh root CA, not a workload or leaf \
                 certificate: take it from configmap istio-ca-root-cert",
            ));
        }
    }
}

fn check_token(c: &Claims, env: Option<&ClusterEnv>, now: i64, f: &mut Vec<Finding>) {
    if let Some(exp) = c.exp {
        if exp <= now {
            f.push(Finding::error(
                "token.expired",
                Some(TOKEN),
                format!(
                    "token expired at {} ({} ago)",
                    time_text(exp),
                    span_text(now.saturating_sub(exp))
                ),
                HINT_NEW_TOKEN,
            ));
        } else if exp.saturating_sub(now) < TOKEN_SOON_SECS {
            f.push(Finding::warning(
                "token.expires_soon",
                Some(TOKEN),
                format!(
                    "token expires at {} (in {})",
                    time_text(exp),
                    span_text(exp.saturating_sub(now))
                ),
                format!(
                    "the agent needs the token for its first certificate: install right \
                     away, or {HINT_NEW_TOKEN}"
                ),
            ));
        }
    }
    if let Some(nbf) = c.nbf
        && nbf.saturating_sub(SKEW_SECS) > now
    {
        f.push(Finding::error(
            "token.not_yet_valid",
            Some(TOKEN),
            format!(
                "token is valid only from {} (in {})",
                time_text(nbf),
                span_text(nbf.saturating_sub(now))
            ),
            "check this VM's clock (timedatectl; enable NTP): it is behind the cluster's",
        ));
    }
    if !c.aud.iter().any(|a| a == ISTIO_CA_AUDIENCE) {
        let has = if c.aud.is_empty() {
            "no audience (a legacy, non-expiring ServiceAccount secret token?)".to_string()
        } else {
            format!("audience {}", c.aud.join(", "))
        };
        f.push(Finding::error(
            "token.audience",
            Some(TOKEN),
            format!("token has {has}, istiod expects `{ISTIO_CA_AUDIENCE}`"),
            "use the token istioctl requests (audience istio-ca): re-run `istioctl x workload \
             entry configure`; or `kubectl create token <sa> -n <ns> --audience istio-ca`",
        ));
    }
    let Some(env) = env else { return };
    let (Some(ns), Some(sa)) = (env.get("POD_NAMESPACE"), env.get("SERVICE_ACCOUNT")) else {
        return;
    };
    let want = format!("system:serviceaccount:{ns}:{sa}");
    let sub = c.sub.as_deref().unwrap_or("");
    if sub != want {
        let got = if sub.is_empty() {
            "no subject".to_string()
        } else {
            format!("subject `{sub}`")
        };
        f.push(Finding::error(
            "token.subject_mismatch",
            Some(TOKEN),
            format!(
                "token has {got}, but cluster.env says POD_NAMESPACE={ns} and \
                 SERVICE_ACCOUNT={sa} (expected `{want}`); istiod would refuse the \
                 workload's identity"
            ),
            "the token and cluster.env come from different bundles: use the files of one \
             `istioctl x workload entry configure` run",
        ));
    }
}

/// Every variable something on the VM reads, reference/istio-vm.md §4.6 A-D
/// (HEAD and 1.10). Free-form prefixes are handled separately.
pub const KNOWN_KEYS: &[&str] = &[
    // A. istio-start.sh
    "ISTIO_BIN_BASE",
    "ISTIO_LOG_DIR",
    "ISTIO_NAMESPACE",
    "ISTIO_SERVICE",
    "ISTIO_SYSTEM_NAMESPACE",
    "ISTIO_CP_AUTH",
    "ISTIO_SVC_IP",
    "POD_NAME",
    "ISTIO_CUSTOM_IP_TABLES",
    "EXEC_USER",
    "ISTIO_INBOUND_INTERCEPTION_MODE",
    "PILOT_ADDRESS",
    "ISTIO_PILOT_PORT",
    "CA_ADDR",
    "PROV_CERT",
    "OUTPUT_CERTS",
    "ISTIO_AGENT_FLAGS",
    "PROXY_CONFIG",
    // B. istio-iptables
    "ISTIO_INBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_EXCLUDE_INTERFACES",
    "ISTIO_SERVICE_CIDR",
    "ISTIO_SERVICE_EXCLUDE_CIDR",
    "ISTIO_OUTBOUND_PORTS",
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
    "ISTIO_INBOUND_TPROXY_MARK",
    "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
    "INBOUND_CAPTURE_PORT",
    "INBOUND_TUNNEL_PORT",
    "PROXY_UID",
    "PROXY_GID",
    "ENVOY_USER",
    "KUBE_VIRT_INTERFACES",
    "REDIRECT_DNS",
    "ISTIO_META_DNS_CAPTURE",
    "CAPTURE_ALL_DNS",
    "DROP_INVALID",
    "INVALID_DROP",
    "DUAL_STACK",
    "ISTIO_DUAL_STACK",
    "ISTIO_OUTBOUND_OWNER_GROUPS",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
    "NATIVE_NFTABLES",
    "FORCE_IPTABLES_BINARY",
    "RECONCILE",
    "FORCE_APPLY",
    "DRY_RUN",
    "SKIP_RULE_APPLY",
    "RUN_VALIDATION",
    "IPTABLES_PROBE_PORT",
    "PROBE_TIMEOUT",
    "NETWORK_NAMESPACE",
    "CNI_MODE",
    "CLEANUP_ONLY",
    "ENVOY_PORT",
    "RESTORE_FORMAT",
    "ISTIO_META_DNS_CONNTRACK_ZONE",
    // C. pilot-agent
    "INSTANCE_IP",
    "POD_NAMESPACE",
    "SERVICE_ACCOUNT",
    "ISTIO_META_CLUSTER_ID",
    "XDS_AUTH_PROVIDER",
    "JWT_POLICY",
    "XDS_ROOT_CA",
    "CA_ROOT_CA",
    "CA_PROVIDER",
    "TRUST_DOMAIN",
    "SECRET_TTL",
    "FILE_DEBOUNCE_DURATION",
    "SECRET_GRACE_PERIOD_RATIO",
    "SECRET_GRACE_PERIOD_RATIO_JITTER",
    "WORKLOAD_RSA_KEY_SIZE",
    "PKCS8_KEY",
    "ECC_SIGNATURE_ALGORITHM",
    "ECC_CURVE",
    "FILE_MOUNTED_CERTS",
    "CREDENTIAL_FETCHER_TYPE",
    "CREDENTIAL_IDENTITY_PROVIDER",
    "WORKLOAD_IDENTITY_SOCKET_FILE",
    "ISTIO_META_ENABLE_DNS_SERVER",
    "ISTIO_META_ENABLE_SELF_DISCOVERY",
    "ISTIO_META_CERT_SIGNER",
    "DNS_PROXY_ADDR",
    "DNS_FORWARD_PARALLEL",
    "DNS_FORWARD_TIMEOUT",
    "PROXY_CONFIG_XDS_AGENT",
    "WASM_INSECURE_REGISTRIES",
    "WASM_MODULE_EXPIRY",
    "WASM_PURGE_INTERVAL",
    "WASM_HTTP_REQUEST_TIMEOUT",
    "WASM_HTTP_REQUEST_MAX_RETRIES",
    "PEER_METADATA_DISCOVERY",
    "ENVOY_STATUS_PORT",
    "ENVOY_PROMETHEUS_PORT",
    "ENVOY_SECURE_METRICS_PORT",
    "ENVOY_SECURE_MERGED_METRICS_PORT",
    "GRPC_XDS_BOOTSTRAP",
    "DISABLE_ENVOY",
    "ISTIOD_SAN",
    "MINIMUM_DRAIN_DURATION",
    "EXIT_ON_ZERO_ACTIVE_CONNECTIONS",
    "ENVOY_SKIP_DEPRECATED_LOGS",
    "ISTIO_KUBE_APP_PROBERS",
    "REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION",
    "TOKEN_AUDIENCES",
    "ISTIO_BOOTSTRAP",
    "ISTIO_BOOTSTRAP_OVERRIDE",
    "ISTIO_ENVOY_ENABLE_CORE_DUMP",
    "ISTIO_PROMETHEUS_ANNOTATIONS",
    "ISTIO_CPU_LIMIT",
    "ENABLE_PROBE_KEEPALIVE_CONNECTIONS",
    "ISTIO_ENABLE_HTTP2_PROBING",
    "CLOUD_PLATFORM",
    "GCP_METADATA",
    "GCP_ZONE",
    "GCP_QUOTA_PROJECT",
    "ENVOY_PATH",
    "XDS_AUTH_PLAINTEXT",
    // C, 1.10 only
    "PILOT_CERT_PROVIDER",
    "PROXY_XDS_VIA_AGENT",
    "REQUIRE_3P_TOKEN",
    "GKE_CLUSTER_URL",
    // D. written by istioctl, informational
    "CANONICAL_SERVICE",
    "CANONICAL_REVISION",
    "ISTIO_META_WORKLOAD_NAME",
    "ISTIO_META_MESH_ID",
    "ISTIO_META_NETWORK",
];

/// Free-form prefixes: node metadata and extra gRPC headers.
pub const KNOWN_PREFIXES: &[&str] = &[
    "ISTIO_META_",
    "ISTIO_METAJSON_",
    "CA_HEADER_",
    "XDS_HEADER_",
];

/// Keys the VM cannot do without. istio-start.sh falls back to namespace
/// `default` without ISTIO_NAMESPACE; the agent needs POD_NAMESPACE and
/// SERVICE_ACCOUNT for its identity; istio-iptables captures nothing without
/// the port and CIDR keys.
pub const REQUIRED_KEYS: &[&str] = &[
    "ISTIO_NAMESPACE",
    "ISTIO_SERVICE",
    "POD_NAMESPACE",
    "SERVICE_ACCOUNT",
    "ISTIO_INBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_SERVICE_CIDR",
];

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known key, if it is close enough to be a typo.
pub fn suggest(key: &str) -> Option<&'static str> {
    let limit = (key.len() / 4).clamp(1, 3);
    KNOWN_KEYS
        .iter()
        .map(|k| (distance(&key.to_ascii_uppercase(), k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

fn is_known(key: &str) -> bool {
    KNOWN_KEYS.contains(&key) || KNOWN_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// A comma-separated port list (istio-iptables `split` then `ParseUint`).
fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for p in v.split(',') {
        let p = p.trim();
        match p.parse::<u16>() {
            Ok(n) if n > 0 => out.push(n),
            _ => return Err(format!("`{p}` is not a port (1-65535)")),
        }
    }
    Ok(out)
}

/// A comma-separated CIDR list (istio-iptables `netip.ParsePrefix`).
fn check_cidrs(v: &str) -> Result<(), String> {
    for c in v.split(',') {
        let c = c.trim();
        let (ip, len) = c
            .split_once('/')
            .ok_or_else(|| format!("`{c}` is not a CIDR (address/prefix length)"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{c}`: `{ip}` is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => return Err(format!("`{c}`: prefix length must be 0-{max}")),
        }
    }
    Ok(())
}

fn invalid(f: &mut Vec<Finding>, env: &ClusterEnv, key: &str, why: String, hint: &str) {
    let line = env.line(key).unwrap_or(0);
    f.push(Finding::error(
        "env.invalid_value",
        Some(CLUSTER_ENV),
        format!("line {line}: {key}: {why}"),
        hint,
    ));
}

fn check_env(env: &ClusterEnv, mesh: Option<&MeshConfig>, f: &mut Vec<Finding>) {
    for key in REQUIRED_KEYS {
        if env.get(key).is_none() {
            f.push(Finding::error(
                "env.missing_key",
                Some(CLUSTER_ENV),
                format!("{key} is not set"),
                format!(
                    "istioctl always writes {key}; add the line from the generated cluster.env, \
                     or {HINT_REGENERATE_BUNDLE}"
                ),
            ));
        }
    }

    // Unknown keys: each once, in file order. Keys that mesh.yaml's proxyMetadata
    // also sets are deliberate agent environment (istioctl copies them all).
    let mut seen = BTreeSet::new();
    for (key, _) in &env.entries {
        if !seen.insert(key.as_str()) || is_known(key) {
            continue;
        }
        if mesh.is_some_and(|m| m.proxy_metadata.contains_key(key)) {
            continue;
        }
        let line = env.line(key).unwrap_or(0);
        let hint = match key.as_str() {
            "ISTIO_INBOUND_EXCLUDE_PORTS" => "nothing reads this name (a stale one from \
                sidecar.env): did you mean ISTIO_LOCAL_EXCLUDE_PORTS?"
                .to_string(),
            "ISTIO_CFG" => {
                "nothing reads this name (a stale one from sidecar.env); remove it".to_string()
            }
            _ => match suggest(key) {
                Some(s) => format!("did you mean {s}?"),
                None => "no Istio component reads this variable; remove it, or if it is your \
                    own node metadata name it ISTIO_META_<NAME>"
                    .to_string(),
            },
        };
        f.push(Finding::warning(
            "env.unknown_key",
            Some(CLUSTER_ENV),
            format!("line {line}: unknown variable {key}"),
            hint,
        ));
    }

    let port_hint = "a comma-separated list of ports, e.g. '22,15090,15021,15020'";
    for key in [
        "ISTIO_LOCAL_EXCLUDE_PORTS",
        "ISTIO_OUTBOUND_PORTS",
        "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
    ] {
        if let Some(v) = env.get(key).filter(|v| !v.trim().is_empty())
            && let Err(e) = parse_ports(v)
        {
            invalid(f, env, key, e, port_hint);
        }
    }
    let inbound = env.get("ISTIO_INBOUND_PORTS").map(str::trim);
    let inbound_ports = match inbound {
        Some("*") | Some("") | None => Ok(Vec::new()),
        Some(v) => parse_ports(v),
    };
    if let Err(e) = &inbound_ports {
        invalid(
            f,
            env,
            "ISTIO_INBOUND_PORTS",
            e.clone(),
            "`*` (capture every inbound port) or the workload's ports, e.g. '9080,9443'",
        );
    }
    for key in ["ISTIO_SERVICE_CIDR", "ISTIO_SERVICE_EXCLUDE_CIDR"] {
        if let Some(v) = env
            .get(key)
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "*")
            && let Err(e) = check_cidrs(v)
        {
            invalid(
                f,
                env,
                key,
                e,
                "`*` or a comma-separated list of CIDRs, e.g. '10.0.0.0/8,fd00::/8'",
            );
        }
    }
    if let Some(v) = env.get("ISTIO_METAJSON_LABELS") {
        match serde_json::from_str::<Value>(v) {
            Ok(Value::Object(m)) if m.values().all(Value::is_string) => {
                if m.contains_key("service.istio.io/canonical-version") {
                    f.push(Finding::warning(
                        "env.legacy_label",
                        Some(CLUSTER_ENV),
                        format!(
                            "line {}: ISTIO_METAJSON_LABELS has \
                             `service.istio.io/canonical-version`, written by Istio 1.10 by \
                             mistake",
                            env.line("ISTIO_METAJSON_LABELS").unwrap_or(0)
                        ),
                        "telemetry reads `service.istio.io/canonical-revision`: rename the \
                         label (Istio 1.12+ writes it correctly)",
                    ));
                }
            }
            Ok(_) => invalid(
                f,
                env,
                "ISTIO_METAJSON_LABELS",
                "not a JSON object of string values".into(),
                r#"a JSON object such as '{"app":"ratings","version":"v1"}'"#,
            ),
            Err(e) => invalid(
                f,
                env,
                "ISTIO_METAJSON_LABELS",
                format!("not JSON: {e}"),
                r#"a JSON object such as '{"app":"ratings","version":"v1"}' in single quotes"#,
            ),
        }
    }
    for (key, v) in env.to_map() {
        if key == "ISTIO_METAJSON_LABELS" || !key.starts_with("ISTIO_METAJSON_") {
            continue;
        }
        if let Err(e) = serde_json::from_str::<Value>(&v) {
            invalid(
                f,
                env,
                &key,
                format!("not JSON: {e}"),
                "a JSON value in single quotes",
            );
        }
    }
    if let Some(v) = env.get("ISTIO_META_POD_PORTS") {
        // HEAD writes a JSON array; 1.10 a JSON string holding the array.
        let ok = match serde_json::from_str::<Value>(v) {
            Ok(Value::Array(_)) => true,
            Ok(Value::String(s)) => matches!(serde_json::from_str(&s), Ok(Value::Array(_))),
            _ => false,
        };
        if !ok {
            invalid(
                f,
                env,
                "ISTIO_META_POD_PORTS",
                "not a JSON list of ports".into(),
                r#"e.g. '[{"name":"http","containerPort":9080,"protocol":""}]'"#,
            );
        }
    }
    if let Some(v) = env.get("ISTIO_SVC_IP").filter(|v| !v.is_empty())
        && v.parse::<IpAddr>().is_err()
    {
        invalid(
            f,
            env,
            "ISTIO_SVC_IP",
            format!("`{v}` is not an IP address"),
            "this VM's address in the mesh, e.g. '10.128.0.50'",
        );
    }
    for key in ["CA_ADDR", "PILOT_ADDRESS"] {
        if let Some(v) = env.get(key).filter(|v| !v.is_empty())
            && split_host_port(v).is_none()
        {
            invalid(
                f,
                env,
                key,
                format!("`{v}` is not host:port"),
                "e.g. 'istiod.istio-system.svc:15012'",
            );
        }
    }
    for key in [
        "ISTIO_META_DNS_CAPTURE",
        "ISTIO_META_ENABLE_DNS_SERVER",
        "CAPTURE_ALL_DNS",
    ] {
        // Go strconv.ParseBool.
        if let Some(v) = env.get(key)
            && !v.is_empty()
            && !matches!(
                v,
                "1" | "t"
                    | "T"
                    | "TRUE"
                    | "true"
                    | "True"
                    | "0"
                    | "f"
                    | "F"
                    | "FALSE"
                    | "false"
                    | "False"
            )
        {
            invalid(
                f,
                env,
                key,
                format!("`{v}` is not a boolean"),
                "'true' or 'false'",
            );
        }
    }
    if let Some(v) = env.get("ISTIO_INBOUND_INTERCEPTION_MODE")
        && !matches!(v, "" | "REDIRECT" | "TPROXY")
    {
        invalid(
            f,
            env,
            "ISTIO_INBOUND_INTERCEPTION_MODE",
            format!("`{v}` is neither REDIRECT nor TPROXY"),
            "'REDIRECT' (the default) or 'TPROXY'",
        );
    }
    for key in ["CLEANUP_ONLY", "DRY_RUN", "SKIP_RULE_APPLY"] {
        if env
            .get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
        {
            invalid(
                f,
                env,
                key,
                "set to true: istio-iptables would never install the capture rules".into(),
                "remove this line from cluster.env (it is a debugging switch)",
            );
        }
    }
    if let (Some(pod), Some(ns)) = (env.get("POD_NAMESPACE"), env.get("ISTIO_NAMESPACE"))
        && pod != ns
    {
        invalid(
            f,
            env,
            "POD_NAMESPACE",
            format!(
                "`{pod}` differs from ISTIO_NAMESPACE `{ns}`; istio-start.sh starts the agent \
                 with POD_NAMESPACE=$ISTIO_NAMESPACE"
            ),
            "set both to the WorkloadGroup's namespace",
        );
    }

    // Inbound capture of everything: what would Istio's own istio-iptables take?
    let exclude: Vec<u16> = env
        .get("ISTIO_LOCAL_EXCLUDE_PORTS")
        .and_then(|v| parse_ports(v).ok())
        .unwrap_or_default();
    let wildcard = inbound == Some("*");
    let listed = inbound_ports.unwrap_or_default();
    if (wildcard && !exclude.contains(&22)) || listed.contains(&22) {
        f.push(Finding::warning(
            "env.ssh_captured",
            Some(CLUSTER_ENV),
            if listed.contains(&22) {
                "ISTIO_INBOUND_PORTS lists 22: inbound SSH would go through the sidecar".into()
            } else {
                "ISTIO_INBOUND_PORTS='*' and 22 is not in ISTIO_LOCAL_EXCLUDE_PORTS: Istio's \
                 istio-iptables (1.13+) would send inbound SSH to the sidecar"
                    .to_string()
            },
            "istio-vm's own capture rules always keep port 22 out; if Istio's istio-start.sh \
             applies the rules, add 22 to ISTIO_LOCAL_EXCLUDE_PORTS (istioctl 1.13+ does)",
        ));
    }
    if wildcard {
        let missing: Vec<String> = [15020u16, 15021, 15090]
            .into_iter()
            .filter(|p| !exclude.contains(p))
            .map(|p| p.to_string())
            .collect();
        if !missing.is_empty() {
            f.push(Finding::warning(
                "env.agent_port_captured",
                Some(CLUSTER_ENV),
                format!(
                    "ISTIO_INBOUND_PORTS='*' and ISTIO_LOCAL_EXCLUDE_PORTS lacks {}: the \
                     agent's own ports would be captured (Istio 1.10 left out 15020)",
                    missing.join(", ")
                ),
                "istio-vm's own capture rules always exclude 15020, 15021 and 15090; for \
                 Istio's istio-iptables add them to ISTIO_LOCAL_EXCLUDE_PORTS",
            ));
        }
    }
}

/// The address the agent dials: mesh.yaml's, or istio-start.sh's default.
fn discovery_address(mesh: Option<&MeshConfig>, env: Option<&ClusterEnv>) -> String {
    if let Some(a) = mesh.and_then(|m| m.discovery_address.clone()) {
        return a;
    }
    let ns = env
        .and_then(|e| e.get("ISTIO_SYSTEM_NAMESPACE"))
        .filter(|s| !s.is_empty())
        .unwrap_or("istio-system");
    format!("istiod.{ns}.svc:15012")
}

fn check_mesh(mesh: &MeshConfig, env: Option<&ClusterEnv>, f: &mut Vec<Finding>) {
    if let Some(a) = &mesh.discovery_address
        && split_host_port(a)
            .is_none_or(|(h, _)| !hosts::valid_name(h) && h.parse::<IpAddr>().is_err())
    {
        f.push(Finding::error(
            "mesh.discovery_address",
            Some(MESH),
            format!("defaultConfig.discoveryAddress `{a}` is not host:port"),
            "istiod's address with its port, e.g. `istiod.istio-system.svc:15012` (Istio 1.10 \
             wrote revisioned addresses without the port)",
        ));
    }
    let Some(env) = env else { return };
    for (k, mv) in &mesh.proxy_metadata {
        if let Some(ev) = env.get(k)
            && ev != mv
        {
            f.push(Finding::warning(
                "mesh.mismatch",
                Some(MESH),
                format!(
                    "proxyMetadata {k} is `{mv}` but cluster.env (line {}) has `{ev}`; the \
                     cluster.env value wins",
                    env.line(k).unwrap_or(0)
                ),
                format!(
                    "if the cluster.env edit is intended, make mesh.yaml's {k} the same to \
                         avoid confusion; otherwise restore it in cluster.env"
                ),
            ));
        }
    }
    if let (Some(ca), Some(disc)) = (env.get("CA_ADDR"), &mesh.discovery_address)
        && let (Some((ch, _)), Some((dh, _))) = (split_host_port(ca), split_host_port(disc))
        && !ch.eq_ignore_ascii_case(dh)
    {
        f.push(Finding::warning(
            "mesh.mismatch",
            Some(MESH),
            format!(
                "discoveryAddress host `{dh}` differs from cluster.env CA_ADDR host `{ch}`: \
                 certificates and configuration would come from different places"
            ),
            "use the same istiod for both (istioctl writes them alike)",
        ));
    }
}

fn check_hosts(
    entries: &[HostEntry],
    mesh: Option<&MeshConfig>,
    env: Option<&ClusterEnv>,
    f: &mut Vec<Finding>,
) {
    if entries.is_empty() {
        f.push(Finding::error(
            "hosts.empty",
            Some(HOSTS),
            "no host entry: istioctl found no IP for the east-west gateway (a load balancer \
             with only a DNS name?)",
            "re-run istioctl with --ingressIP <gateway IP>, or write the line yourself: \
             `<gateway IP> istiod.istio-system.svc`",
        ));
        return;
    }
    let mut hosts_to_check = vec![discovery_address(mesh, env)];
    if let Some(ca) = env.and_then(|e| e.get("CA_ADDR")).filter(|s| !s.is_empty()) {
        hosts_to_check.push(ca.to_string());
    }
    let mut done = BTreeSet::new();
    for addr in hosts_to_check {
        // An address without a port still names a host that must resolve.
        let host = split_host_port(&addr).map_or(addr.as_str(), |(h, _)| h);
        if !hosts::valid_name(host) {
            continue;
        }
        let host = host.to_ascii_lowercase();
        if !done.insert(host.clone()) || host.parse::<IpAddr>().is_ok() {
            continue;
        }
        if hosts::lookup(entries, &host).is_none() {
            f.push(Finding::warning(
                "hosts.discovery_unresolved",
                Some(HOSTS),
                format!("istiod address {host} is not in hosts; it must resolve through DNS"),
                format!(
                    "add `<gateway IP> {host}` to the bundle's hosts file, unless DNS on this \
                     VM resolves {host}"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("ISTIO_INBOUND_PORT"), Some("ISTIO_INBOUND_PORTS"));
        assert_eq!(suggest("SERVICE_ACOUNT"), Some("SERVICE_ACCOUNT"));
        assert_eq!(suggest("istio_namespace"), Some("ISTIO_NAMESPACE"));
        assert_eq!(suggest("MY_APP_SETTING"), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_ports("22, 15090").unwrap(), [22, 15090]);
        assert!(parse_ports("22,,1").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(check_cidrs("10.0.0.0/8,fd00::/8").is_ok());
        assert!(check_cidrs("10.0.0.0").is_err());
        assert!(check_cidrs("10.0.0.0/33").is_err());
        assert!(check_cidrs("x/8").is_err());
    }

    #[test]
    fn every_known_key_is_unique_and_known() {
        let set: BTreeSet<_> = KNOWN_KEYS.iter().collect();
        assert_eq!(set.len(), KNOWN_KEYS.len());
        for k in KNOWN_KEYS {
            assert_eq!(suggest(k), Some(*k));
        }
    }
}
