//! cluster.env values: required keys, unknown names, and each value's type
//! as the component reading it parses it. The values Istio's start script
//! pastes into a shell line are typed in `shell`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

use super::keys::{REQUIRED_KEYS, is_known, suggest};
use super::{HINT_REGENERATE_BUNDLE, Options, shell};
use crate::bundle::mesh_config::{MeshConfig, split_host_port};
use crate::bundle::{CLUSTER_ENV, ClusterEnv};
use crate::report::{Finding, Severity};

/// A comma-separated port list (istio-iptables `split` then `ParseUint`).
pub(super) fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
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
pub(super) fn check_cidrs(v: &str) -> Result<(), String> {
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

pub(super) fn invalid(f: &mut Vec<Finding>, env: &ClusterEnv, key: &str, why: String, hint: &str) {
    let line = env.line(key).unwrap_or(0);
    f.push(Finding::error(
        "env.invalid_value",
        Some(CLUSTER_ENV),
        format!("line {line}: {key}: {why}"),
        hint,
    ));
}

pub(super) fn check_env(
    env: &ClusterEnv,
    mesh: Option<&MeshConfig>,
    opts: &Options,
    f: &mut Vec<Finding>,
) {
    check_required(env, f);
    check_unknown(env, mesh, f);
    let inbound = check_port_lists(env, f);
    check_json(env, f);
    check_scalars(env, f);
    check_inbound_capture(env, inbound, opts, f);
}

fn check_required(env: &ClusterEnv, f: &mut Vec<Finding>) {
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
}

/// Unknown keys: each once, in file order. Keys that mesh.yaml's proxyMetadata
/// also sets are deliberate agent environment (istioctl copies them all).
/// Loader and shell variables are `shell`'s (an error, not a typo).
fn check_unknown(env: &ClusterEnv, mesh: Option<&MeshConfig>, f: &mut Vec<Finding>) {
    let mut seen = BTreeSet::new();
    for (key, _) in &env.entries {
        if !seen.insert(key.as_str()) || is_known(key) || shell::is_unsafe_key(key) {
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
}

/// The inbound port setting as written (`*`, a list, empty), and the ports
/// it lists when it is a valid list.
type Inbound<'a> = (Option<&'a str>, Result<Vec<u16>, String>);

/// Port and CIDR lists (istio-iptables' own parsing).
fn check_port_lists<'a>(env: &'a ClusterEnv, f: &mut Vec<Finding>) -> Inbound<'a> {
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
    (inbound, inbound_ports)
}

/// JSON-valued keys: labels, other ISTIO_METAJSON_*, pod ports.
fn check_json(env: &ClusterEnv, f: &mut Vec<Finding>) {
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
}

/// Single values: addresses, booleans, modes, debugging switches.
fn check_scalars(env: &ClusterEnv, f: &mut Vec<Finding>) {
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
}

/// Inbound capture: what would Istio's own istio-iptables take, and what will
/// istio-vm's capture (which refuses to capture SSH unless allowed) do?
fn check_inbound_capture(
    env: &ClusterEnv,
    (inbound, inbound_ports): Inbound<'_>,
    opts: &Options,
    f: &mut Vec<Finding>,
) {
    let exclude: Vec<u16> = env
        .get("ISTIO_LOCAL_EXCLUDE_PORTS")
        .and_then(|v| parse_ports(v).ok())
        .unwrap_or_default();
    let wildcard = inbound == Some("*");
    let listed = inbound_ports.unwrap_or_default();
    if listed.contains(&22) {
        // istio-vm's capture refuses such a list (capture/config.rs
        // `apply_vm_safety`) unless allow_ssh_capture: the same answer here,
        // so validate and install agree.
        let (severity, hint) = if opts.allow_ssh_capture {
            (
                Severity::Warning,
                "allow_ssh_capture is set: SSH to this VM will depend on the sidecar",
            )
        } else {
            (
                Severity::Error,
                "remove 22 from ISTIO_INBOUND_PORTS, or set allow_ssh_capture = true in \
                 /etc/istio-vm/config.toml if SSH really must go through the sidecar",
            )
        };
        f.push(Finding::new(
            severity,
            "env.ssh_captured",
            Some(CLUSTER_ENV),
            format!(
                "line {}: ISTIO_INBOUND_PORTS lists 22: inbound SSH would go through the sidecar",
                env.line("ISTIO_INBOUND_PORTS").unwrap_or(0)
            ),
            hint,
        ));
    } else if wildcard && !exclude.contains(&22) {
        f.push(Finding::warning(
            "env.ssh_captured",
            Some(CLUSTER_ENV),
            "ISTIO_INBOUND_PORTS='*' and 22 is not in ISTIO_LOCAL_EXCLUDE_PORTS: Istio's \
             istio-iptables (1.13+) would send inbound SSH to the sidecar",
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // The longest prefix of each family is allowed, one more is not.
        assert!(check_cidrs("10.0.0.1/32, fd00::1/128").is_ok());
        assert!(check_cidrs("fd00::/129").is_err());
        assert!(check_cidrs("10.0.0.0/8,10.0.0.0/33").is_err());
    }

    /// The cluster.env istioctl writes for a VM with a port list: no finding.
    const GOOD: &str = "ISTIO_NAMESPACE='ns'\nISTIO_SERVICE='svc.ns'\nPOD_NAMESPACE='ns'\n\
                        SERVICE_ACCOUNT='sa'\nISTIO_INBOUND_PORTS='8080'\n\
                        ISTIO_LOCAL_EXCLUDE_PORTS='15090,15021,15020'\nISTIO_SERVICE_CIDR='*'\n";

    fn findings_with(text: &str, mesh: Option<&MeshConfig>, opts: &Options) -> Vec<Finding> {
        let env = ClusterEnv::parse(text.as_bytes()).unwrap();
        let mut f = Vec::new();
        check_env(&env, mesh, opts, &mut f);
        f
    }

    /// Findings for GOOD followed by `extra` (a later line wins, as in bash).
    fn findings(extra: &str) -> Vec<Finding> {
        findings_with(&format!("{GOOD}{extra}"), None, &Options::default())
    }

    fn codes(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|x| x.code.as_str()).collect()
    }

    /// The one finding of `extra`, which must be `code` about `key`.
    fn one(extra: &str, code: &str, key: &str) -> Finding {
        let f = findings(extra);
        assert_eq!(codes(&f), [code], "{extra:?}: {f:?}");
        assert!(f[0].message.contains(key), "{extra:?}: {}", f[0].message);
        f.into_iter().next().unwrap()
    }

    #[test]
    fn istioctl_cluster_env_has_no_finding() {
        assert_eq!(findings(""), []);
        // Values that are not JSON, ports or CIDRs are left alone.
        assert_eq!(
            findings("ISTIO_SVC_IP='10.0.0.1'\nTRUST_DOMAIN='cluster.local'\n"),
            []
        );
    }

    #[test]
    fn each_missing_required_key_is_an_error() {
        for key in REQUIRED_KEYS {
            let text: String = GOOD
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}=")))
                .map(|l| format!("{l}\n"))
                .collect();
            let f = findings_with(&text, None, &Options::default());
            let missing: Vec<_> = f
                .iter()
                .filter(|x| x.code == "env.missing_key")
                .map(|x| x.message.as_str())
                .collect();
            assert_eq!(missing, [format!("{key} is not set")], "{f:?}");
        }
    }

    #[test]
    fn unknown_keys_are_named_once_with_a_hint() {
        let f = one("MY_VAR='1'\nMY_VAR='2'\n", "env.unknown_key", "MY_VAR");
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.message.starts_with("line 9:"), "{}", f.message);
        assert!(f.hint.contains("ISTIO_META_<NAME>"), "{}", f.hint);
        let f = one(
            "ISTIO_INBOUND_PORT='80'\n",
            "env.unknown_key",
            "ISTIO_INBOUND_PORT",
        );
        assert_eq!(f.hint, "did you mean ISTIO_INBOUND_PORTS?");
        let f = one(
            "ISTIO_INBOUND_EXCLUDE_PORTS='22'\n",
            "env.unknown_key",
            "ISTIO_INBOUND_EXCLUDE_PORTS",
        );
        assert!(f.hint.contains("ISTIO_LOCAL_EXCLUDE_PORTS"), "{}", f.hint);
        let f = one("ISTIO_CFG='/x'\n", "env.unknown_key", "ISTIO_CFG");
        assert!(f.hint.contains("sidecar.env"), "{}", f.hint);
        // Known names and prefixes, and loader variables (shell's finding).
        assert_eq!(findings("ISTIO_META_FOO='x'\nCA_ADDR='a:1'\n"), []);
        assert_eq!(findings("LD_PRELOAD='/x.so'\nBASH_ENV='/x'\n"), []);
        // mesh.yaml's proxyMetadata names are deliberate agent environment.
        let mesh = MeshConfig::parse(b"defaultConfig:\n  proxyMetadata:\n    MY_VAR: x\n").unwrap();
        let text = format!("{GOOD}MY_VAR='x'\n");
        assert_eq!(findings_with(&text, Some(&mesh), &Options::default()), []);
    }

    #[test]
    fn port_lists_are_parsed_as_istio_iptables_does() {
        for key in [
            "ISTIO_LOCAL_EXCLUDE_PORTS",
            "ISTIO_OUTBOUND_PORTS",
            "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
            "ISTIO_INBOUND_PORTS",
        ] {
            let f = one(&format!("{key}='80,x'\n"), "env.invalid_value", key);
            assert_eq!(f.severity, Severity::Error);
            assert!(f.message.contains("`x` is not a port"), "{}", f.message);
        }
        // Empty lists are allowed (Istio's default); the agent ports are then
        // not excluded, which is only a warning under `*`.
        assert_eq!(findings("ISTIO_OUTBOUND_PORTS=' '\n"), []);
        assert_eq!(findings("ISTIO_INBOUND_PORTS=''\n"), []);
    }

    #[test]
    fn cidr_lists_accept_a_star_or_nothing() {
        for key in ["ISTIO_SERVICE_CIDR", "ISTIO_SERVICE_EXCLUDE_CIDR"] {
            for ok in ["*", " * ", "", "10.0.0.0/8,fd00::/8"] {
                assert_eq!(findings(&format!("{key}='{ok}'\n")), [], "{key}={ok:?}");
            }
            let f = one(&format!("{key}='10.0.0.0'\n"), "env.invalid_value", key);
            assert!(f.message.contains("not a CIDR"), "{}", f.message);
        }
    }

    #[test]
    fn labels_are_a_json_object_of_strings() {
        let key = "ISTIO_METAJSON_LABELS";
        assert_eq!(findings(&format!("{key}='{{\"app\":\"a\"}}'\n")), []);
        for bad in ["{\"app\":1}", "[\"a\"]", "{app}"] {
            one(&format!("{key}='{bad}'\n"), "env.invalid_value", key);
        }
        let f = one(
            &format!("{key}='{{\"service.istio.io/canonical-version\":\"v1\"}}'\n"),
            "env.legacy_label",
            "line 8:",
        );
        assert_eq!(f.severity, Severity::Warning);
    }

    #[test]
    fn other_metajson_values_must_be_json() {
        assert_eq!(findings("ISTIO_METAJSON_X='[1]'\n"), []);
        one(
            "ISTIO_METAJSON_X='nope'\n",
            "env.invalid_value",
            "ISTIO_METAJSON_X",
        );
        // A META (not METAJSON) value is free text.
        assert_eq!(findings("ISTIO_META_X='nope'\n"), []);
    }

    #[test]
    fn pod_ports_are_a_json_list_or_a_string_holding_one() {
        let key = "ISTIO_META_POD_PORTS";
        // HEAD writes the array; 1.10 a JSON string holding it.
        assert_eq!(
            findings(&format!("{key}='[{{\"containerPort\":9080}}]'\n")),
            []
        );
        assert_eq!(findings(&format!("{key}='\"[]\"'\n")), []);
        for bad in ["{}", "\"{}\"", "[", "80"] {
            one(&format!("{key}='{bad}'\n"), "env.invalid_value", key);
        }
    }

    #[test]
    fn addresses_need_a_port_when_set() {
        for key in ["CA_ADDR", "PILOT_ADDRESS"] {
            assert_eq!(findings(&format!("{key}=''\n")), []);
            assert_eq!(findings(&format!("{key}='istiod.x.svc:15012'\n")), []);
            let f = one(&format!("{key}='istiod.x.svc'\n"), "env.invalid_value", key);
            assert!(f.message.contains("not host:port"), "{}", f.message);
        }
    }

    #[test]
    fn booleans_are_go_parse_bool() {
        for key in [
            "ISTIO_META_DNS_CAPTURE",
            "ISTIO_META_ENABLE_DNS_SERVER",
            "CAPTURE_ALL_DNS",
        ] {
            for ok in [
                "", "1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False",
            ] {
                assert_eq!(findings(&format!("{key}='{ok}'\n")), [], "{key}={ok:?}");
            }
            for bad in ["yes", "tRUE", "2"] {
                let f = one(&format!("{key}='{bad}'\n"), "env.invalid_value", key);
                assert!(f.message.contains("not a boolean"), "{}", f.message);
            }
        }
    }

    #[test]
    fn interception_mode_is_redirect_or_tproxy() {
        let key = "ISTIO_INBOUND_INTERCEPTION_MODE";
        for ok in ["", "REDIRECT", "TPROXY"] {
            assert_eq!(findings(&format!("{key}='{ok}'\n")), [], "{ok:?}");
        }
        one(&format!("{key}='redirect'\n"), "env.invalid_value", key);
    }

    #[test]
    fn debugging_switches_that_skip_the_rules_are_errors() {
        for key in ["CLEANUP_ONLY", "DRY_RUN", "SKIP_RULE_APPLY"] {
            for on in ["true", "TRUE", "1"] {
                let f = one(&format!("{key}='{on}'\n"), "env.invalid_value", key);
                assert!(f.message.contains("never install"), "{}", f.message);
            }
            for off in ["false", "0", ""] {
                assert_eq!(findings(&format!("{key}='{off}'\n")), [], "{key}={off:?}");
            }
        }
    }

    #[test]
    fn pod_namespace_must_be_istio_namespace() {
        let f = one(
            "POD_NAMESPACE='other'\n",
            "env.invalid_value",
            "POD_NAMESPACE",
        );
        assert!(f.message.contains("`other` differs"), "{}", f.message);
    }

    #[test]
    fn ssh_in_the_inbound_list_needs_allow_ssh_capture() {
        let text = format!("{GOOD}ISTIO_INBOUND_PORTS='8080,22'\n");
        let f = findings_with(&text, None, &Options::default());
        assert_eq!(codes(&f), ["env.ssh_captured"]);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].message.starts_with("line 8:"), "{}", f[0].message);
        let allow = Options {
            allow_ssh_capture: true,
            ..Options::default()
        };
        let f = findings_with(&text, None, &allow);
        assert_eq!(codes(&f), ["env.ssh_captured"]);
        assert_eq!(f[0].severity, Severity::Warning);
    }

    #[test]
    fn a_star_inbound_list_warns_for_ssh_and_agent_ports_not_excluded() {
        let star = "ISTIO_INBOUND_PORTS='*'\n";
        let f = findings(&format!(
            "{star}ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'\n"
        ));
        assert_eq!(f, []);
        let f = findings(star);
        assert_eq!(codes(&f), ["env.ssh_captured"]);
        assert_eq!(f[0].severity, Severity::Warning);
        let f = findings(&format!("{star}ISTIO_LOCAL_EXCLUDE_PORTS='22,15090'\n"));
        assert_eq!(codes(&f), ["env.agent_port_captured"]);
        assert!(
            f[0].message.contains("lacks 15020, 15021:"),
            "{}",
            f[0].message
        );
        // An unreadable exclude list excludes nothing.
        let f = findings(&format!("{star}ISTIO_LOCAL_EXCLUDE_PORTS='22,x'\n"));
        assert_eq!(
            codes(&f),
            [
                "env.invalid_value",
                "env.ssh_captured",
                "env.agent_port_captured"
            ]
        );
    }
}
