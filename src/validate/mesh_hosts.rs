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
}
