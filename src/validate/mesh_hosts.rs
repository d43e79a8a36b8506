//! mesh.yaml and hosts checks.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::bundle::hosts::{self, HostEntry};
use crate::bundle::mesh_config::{MeshConfig, split_host_port};
use crate::bundle::{ClusterEnv, HOSTS, MESH};
use crate::layout;
use crate::report::Finding;

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

pub(super) fn check_mesh(mesh: &MeshConfig, env: Option<&ClusterEnv>, f: &mut Vec<Finding>) {
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

pub(super) fn check_hosts(
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

/// Collapsed form of a line for marker comparison: no whitespace at all,
/// lower case. `#  end  ISTIO-VM` and `# END istio-vm` look alike here.
fn marker_key(line: &str) -> String {
    line.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// True when `line` could be taken for one of our managed-block markers, in
/// any case or spacing: wider than the block parser (`plan::find_block`)
/// on purpose, so that no future loosening of it lets bundle content in.
pub fn looks_like_marker(line: &str) -> bool {
    let key = marker_key(line);
    [layout::HOSTS_BEGIN, layout::HOSTS_END]
        .iter()
        .any(|m| key.starts_with(&marker_key(m)))
}

/// The bundle's hosts lines go between our markers in /etc/hosts: a line that
/// looks like a marker would end (or open) the block early, and uninstall and
/// every later install would then fail on a broken block.
pub(super) fn check_markers(bytes: &[u8], f: &mut Vec<Finding>) {
    let text = String::from_utf8_lossy(bytes);
    for (i, line) in text.lines().enumerate() {
        if looks_like_marker(line) {
            f.push(Finding::error(
                "hosts.marker",
                Some(HOSTS),
                format!(
                    "line {}: `{}` looks like istio-vm's own /etc/hosts block marker",
                    i + 1,
                    line.trim()
                ),
                format!(
                    "remove the line: `{}` and `{}` are written by istio-vm only \
                     (istioctl writes only `<IP> <name>` lines)",
                    layout::HOSTS_BEGIN,
                    layout::HOSTS_END
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_in_any_case_or_spacing() {
        for l in [
            "# BEGIN istio-vm",
            "# END istio-vm",
            "#END istio-vm",
            "  #   end   ISTIO-VM  ",
            "# End istio-vm\r",
            "\t# BEGIN istio-vm trailing",
        ] {
            assert!(looks_like_marker(l), "{l:?}");
        }
        for l in [
            "# a comment",
            "198.51.100.1 istiod.istio-system.svc",
            "# END",
            "",
        ] {
            assert!(!looks_like_marker(l), "{l:?}");
        }
    }

    fn mesh(yaml: &str) -> MeshConfig {
        MeshConfig::parse(yaml.as_bytes()).unwrap()
    }
    fn env(text: &str) -> ClusterEnv {
        ClusterEnv::parse(text.as_bytes()).unwrap()
    }
    fn codes(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|x| x.code.as_str()).collect()
    }

    #[test]
    fn discovery_address_defaults_like_istio_start() {
        let m = mesh("defaultConfig:\n  discoveryAddress: istiod.x.svc:15012\n");
        assert_eq!(discovery_address(Some(&m), None), "istiod.x.svc:15012");
        let e = env("ISTIO_SYSTEM_NAMESPACE='mesh-ns'\n");
        assert_eq!(
            discovery_address(None, Some(&e)),
            "istiod.mesh-ns.svc:15012"
        );
        let e = env("ISTIO_SYSTEM_NAMESPACE=''\n");
        assert_eq!(
            discovery_address(None, Some(&e)),
            "istiod.istio-system.svc:15012"
        );
    }

    #[test]
    fn mesh_address_must_be_host_port() {
        for (addr, bad) in [
            ("istiod.istio-system.svc:15012", false),
            ("[fd00::1]:15012", false),
            ("istiod-1-10.istio-system.svc", true),
            ("bad_host!:15012", true),
        ] {
            let mut f = Vec::new();
            check_mesh(
                &mesh(&format!("defaultConfig:\n  discoveryAddress: \"{addr}\"\n")),
                None,
                &mut f,
            );
            let want: &[&str] = if bad {
                &["mesh.discovery_address"]
            } else {
                &[]
            };
            assert_eq!(codes(&f), want, "{addr}");
        }
    }

    #[test]
    fn mesh_and_cluster_env_disagreeing_is_a_warning() {
        let m = mesh(
            "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n  \
             proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n",
        );
        let check = |e: Option<&ClusterEnv>| {
            let mut f = Vec::new();
            check_mesh(&m, e, &mut f);
            f
        };
        assert!(check(None).is_empty());
        let same = env("ISTIO_META_DNS_CAPTURE='true'\nCA_ADDR='ISTIOD.istio-system.svc:15012'\n");
        assert!(check(Some(&same)).is_empty());
        let f = check(Some(&env("ISTIO_META_DNS_CAPTURE='false'\n")));
        assert_eq!(codes(&f), ["mesh.mismatch"]);
        assert!(f[0].message.contains("(line 1)"), "{}", f[0].message);
        let f = check(Some(&env("CA_ADDR='other.example:15012'\n")));
        assert_eq!(codes(&f), ["mesh.mismatch"]);
        assert!(f[0].message.contains("other.example"), "{}", f[0].message);
    }

    #[test]
    fn each_istiod_host_missing_from_hosts_is_named_once() {
        let entries = hosts::parse("198.51.100.1 istiod.istio-system.svc\n").unwrap();
        let run = |m: Option<&MeshConfig>, e: Option<&ClusterEnv>| {
            let mut f = Vec::new();
            check_hosts(&entries, m, e, &mut f);
            f
        };
        let mut f = Vec::new();
        check_hosts(&[], None, None, &mut f);
        assert_eq!(codes(&f), ["hosts.empty"]);
        // Default address, CA on the same host in another case: resolved.
        let e = env("CA_ADDR='ISTIOD.istio-system.svc:15012'\n");
        assert!(run(None, Some(&e)).is_empty());
        // An IP address needs no entry; an empty CA_ADDR is not an address.
        let e = env("CA_ADDR='203.0.113.9:15012'\n");
        assert!(run(None, Some(&e)).is_empty());
        let e = env("CA_ADDR=''\n");
        assert!(run(None, Some(&e)).is_empty());
        // Discovery and CA on one missing host: one warning, naming it.
        let m = mesh("defaultConfig:\n  discoveryAddress: istiod.other.svc:15012\n");
        let e = env("CA_ADDR='istiod.other.svc:15012'\n");
        let f = run(Some(&m), Some(&e));
        assert_eq!(codes(&f), ["hosts.discovery_unresolved"]);
        assert!(f[0].message.contains("istiod.other.svc"));
        // A CA on another missing host: its own warning.
        let e = env("CA_ADDR='ca.example:15012'\n");
        let f = run(None, Some(&e));
        assert_eq!(codes(&f), ["hosts.discovery_unresolved"]);
        assert!(f[0].message.contains("ca.example"));
    }

    #[test]
    fn marker_lines_are_found_by_line_number() {
        assert_eq!(marker_key(" # END\tIstio-VM \r"), "#endistio-vm");
        let mut f = Vec::new();
        check_markers(b"198.51.100.1 a.example\n  # end ISTIO-VM\n", &mut f);
        assert_eq!(codes(&f), ["hosts.marker"]);
        assert!(f[0].message.starts_with("line 2:"), "{}", f[0].message);
    }
}
