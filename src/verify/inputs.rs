//! What verify reads from the placed files under `--root`: where istiod is,
//! who this VM is, what it trusts and what it presents.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use super::version;
use crate::bundle::{ClusterEnv, MeshConfig};
use crate::layout;
use crate::sysroot::Sysroot;

/// Istio's default when the mesh config names no discovery address
/// (pkg/config/mesh/mesh.go `DefaultProxyConfig`).
pub const DEFAULT_DISCOVERY: &str = "istiod.istio-system.svc:15012";
pub const DEFAULT_PORT: u16 = 15012;
/// Host pilot-agent verifies when the address says `localhost`
/// (pilot/pkg/grpc/tls.go).
pub const DEFAULT_SAN: &str = "istiod.istio-system.svc";

/// Where pilot-agent writes the workload certificate it renews with
/// (`OUTPUT_CERTS=./etc/certs` in istio-start.sh, reference §4.3).
pub const WORKLOAD_CERT: &str = "/etc/certs/cert-chain.pem";
pub const WORKLOAD_KEY: &str = "/etc/certs/key.pem";

/// Reads a placed file through the one view of the VM's filesystem
/// (symlinks inside the root only, regular files only, bounded); the error
/// names the VM path.
pub fn read(root: &Path, path: &str) -> Result<Vec<u8>, String> {
    let r = Sysroot::new(root).map_err(|e| format!("{e:#}"))?;
    match r.read(path) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(format!("{path} does not exist")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// `host:port` of istiod (or of the CA), and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// What the TLS check verifies: `ISTIOD_SAN`, else the host
    /// (`localhost` becomes `istiod.istio-system.svc`, as pilot-agent does).
    pub server_name: String,
    /// Where the address came from, for messages.
    pub source: &'static str,
}

impl Target {
    /// A discovery address; without a port, 15012.
    pub fn parse(addr: &str, san: Option<&str>, source: &'static str) -> Result<Target, String> {
        Self::parse_port(addr, san, source, Some(DEFAULT_PORT))
    }

    /// An address that must carry its port (CA_ADDR).
    pub fn parse_with_port(
        addr: &str,
        san: Option<&str>,
        source: &'static str,
    ) -> Result<Target, String> {
        Self::parse_port(addr, san, source, None)
    }

    fn parse_port(
        addr: &str,
        san: Option<&str>,
        source: &'static str,
        default_port: Option<u16>,
    ) -> Result<Target, String> {
        let addr = addr.trim();
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (h, tail) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{addr}`: unclosed `[`"))?;
            (h.to_string(), tail.strip_prefix(':'))
        } else {
            match addr.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
                _ => (addr.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{addr}` has no host"));
        }
        let port = match port {
            None => default_port.ok_or_else(|| {
                format!(
                    "`{addr}` has no port: pilot-agent dials it as written and gRPC fails with `missing port in address` (use {addr}:15012)"
                )
            })?,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{addr}`: `{p}` is not a port"))?,
        };
        let server_name = match san.filter(|s| !s.is_empty()) {
            Some(s) => s.to_string(),
            None if host.contains("localhost") => DEFAULT_SAN.to_string(),
            None => host.clone(),
        };
        Ok(Target {
            host,
            port,
            server_name,
            source,
        })
    }

    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The workload identity cluster.env declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn spiffe(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Everything the network checks need, read once per attempt.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub env: BTreeMap<String, String>,
    pub env_error: Option<String>,
    pub discovery: Option<Target>,
    /// `CA_ADDR` when it names another place than the discovery address.
    pub ca: Option<Target>,
    pub target_error: Option<String>,
    /// The installed istio-sidecar, whose rules decide the addresses.
    pub sidecar: Option<version::Installed>,
    /// What this sidecar version ignores, for the report.
    pub notes: Vec<String>,
    /// Who verify's connections toward istiod are made as.
    pub owner: super::net::Owner,
    pub root_cert_pem: Option<Vec<u8>>,
    pub token: Option<Vec<u8>>,
    /// The agent's workload certificate chain and key (`OUTPUT_CERTS`), if
    /// both files exist; the agent presents them to the CA and to istiod.
    pub workload: Option<(Vec<u8>, Vec<u8>)>,
    /// Entries of the VM's /etc/hosts (the whole file).
    pub hosts: Vec<(IpAddr, Vec<String>)>,
    /// Entries inside the `# BEGIN istio-vm` block only.
    pub hosts_block: Vec<(IpAddr, Vec<String>)>,
}

/// The uid and gid Istio's capture rules let through, as capture renders
/// them for this root (one source: `capture::IstioConfig::from_inputs`):
/// `PROXY_UID`/`PROXY_GID` in cluster.env, else istio-proxy's ids, else
/// Istio's default 1337 (tools/istio-iptables/pkg/constants/constants.go@1.10.0
/// `DefaultProxyUID`). So in an image tree without istio-proxy yet, verify's
/// sockets still match the recorded `--uid-owner 1337` rules. If cluster.env
/// does not render, istio-proxy's ids as the agent would have them.
fn exempt_owner(root: &Path, env: &BTreeMap<String, String>) -> super::net::Owner {
    let (uid, gid) =
        crate::capture::sysfiles::proxy_ids(root, layout::PROXY_USER).unwrap_or((None, None));
    let inp = crate::capture::Inputs {
        env,
        resolv_conf: "",
        uid,
        gid,
        host_ipv6: false,
        exclude_inbound_ports: &[],
        exclude_outbound_cidrs: &[],
        allow_ssh_capture: false,
    };
    let rendered = crate::capture::IstioConfig::from_inputs(&inp)
        .ok()
        .and_then(|c| {
            let first = |v: &[String]| v.first()?.parse::<u32>().ok();
            Some((first(&c.proxy_uids)?, first(&c.proxy_gids)?))
        });
    super::net::Owner(rendered.or_else(|| uid.zip(gid)))
}

impl Inputs {
    pub fn load(root: &Path) -> Inputs {
        let mut i = Inputs::default();
        match read(root, layout::CLUSTER_ENV) {
            Ok(b) => match ClusterEnv::parse(&b) {
                Ok(e) => i.env = e.to_map(),
                Err(e) => i.env_error = Some(format!("{}: {e}", layout::CLUSTER_ENV)),
            },
            Err(e) => i.env_error = Some(e),
        }
        let mesh_addr = read(root, layout::MESH_CONFIG)
            .ok()
            .and_then(|b| discovery_address(&b));
        i.sidecar = installed_sidecar(root);
        let plan = version::plan(
            i.sidecar.as_ref().map(|s| s.version),
            &i.env,
            mesh_addr.as_deref(),
        );
        i.notes.extend(plan.mesh_ignored.as_ref().map(|m| {
            format!(
                "the mesh config's discoveryAddress {m} is ignored: this sidecar's istio-start.sh always sets it in PROXY_CONFIG"
            )
        }));
        i.notes.extend(plan.san_ignored.map(str::to_string));
        match Target::parse(
            &plan.discovery.addr,
            plan.xds_san.as_deref(),
            plan.discovery.source,
        ) {
            Ok(t) => i.discovery = Some(t),
            Err(e) => i.target_error = Some(format!("{}: {e}", plan.discovery.source)),
        }
        // pilot-agent dials CA_ADDR as written; without a port gRPC fails
        // (`missing port in address`), it never adds 15012.
        match Target::parse_with_port(&plan.ca.addr, None, plan.ca.source) {
            Ok(t) => {
                if i.discovery
                    .as_ref()
                    .map(|d| (&d.host, d.port, &d.server_name))
                    != Some((&t.host, t.port, &t.server_name))
                {
                    i.ca = Some(t);
                }
            }
            Err(e) => i.target_error = Some(format!("{}: {e}", plan.ca.source)),
        }
        i.owner = exempt_owner(root, &i.env);
        i.root_cert_pem = read(root, layout::ROOT_CERT).ok();
        i.token = read(root, layout::TOKEN).ok();
        if let (Ok(c), Ok(k)) = (read(root, WORKLOAD_CERT), read(root, WORKLOAD_KEY)) {
            i.workload = Some((c, k));
        }
        if let Ok(b) = read(root, layout::ETC_HOSTS) {
            let text = String::from_utf8_lossy(&b);
            i.hosts = parse_hosts(&text);
            i.hosts_block = parse_hosts(&managed_block(&text));
        }
        i
    }

    /// Where the CA call goes: `CA_ADDR`, else the discovery address.
    pub fn ca_target(&self) -> Option<&Target> {
        self.ca.as_ref().or(self.discovery.as_ref())
    }

    pub fn identity(&self) -> Option<Identity> {
        let get = |k: &str| self.env.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Identity {
            // pkg/env treats a set-but-empty TRUST_DOMAIN as empty; istiod's
            // default trust domain is cluster.local, which is what it signs.
            trust_domain: get("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into()),
            namespace: version::agent_namespace(&self.env),
            service_account: get("SERVICE_ACCOUNT")?,
        })
    }

    pub fn dns_capture(&self) -> bool {
        self.env.get("ISTIO_META_DNS_CAPTURE").map(String::as_str) == Some("true")
    }

    /// Addresses /etc/hosts gives `name`, preferring the istio-vm block.
    pub fn hosts_addrs(&self, name: &str) -> (Vec<IpAddr>, bool) {
        let find = |entries: &[(IpAddr, Vec<String>)]| -> Vec<IpAddr> {
            entries
                .iter()
                .filter(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
                .map(|(a, _)| *a)
                .collect()
        };
        let block = find(&self.hosts_block);
        if !block.is_empty() {
            return (block, true);
        }
        (find(&self.hosts), false)
    }
}

/// Where the sidecar package's files and databases are (Istio's .deb/.rpm:
/// tools/packaging/packaging.mk@1.12.0 puts istio-start.sh in /usr/local/bin).
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
pub const START_SCRIPT: &str = "/usr/local/bin/istio-start.sh";
pub const SIDECAR_PACKAGE: &str = "istio-sidecar";

/// The installed istio-sidecar: from the package database (dpkg's status
/// file, else rpm's database, through the sysroot), else the version
/// istio-start.sh announces.
pub fn installed_sidecar(root: &Path) -> Option<version::Installed> {
    let found = |v: &str, source: String| {
        version::Version::parse(v).map(|version| version::Installed { version, source })
    };
    if let Ok(r) = Sysroot::new(root)
        && let Ok(Some(p)) = r.installed_package(SIDECAR_PACKAGE)
    {
        let db = match p.source {
            crate::sysroot::PackageDb::Dpkg => format!("dpkg's {DPKG_STATUS}"),
            crate::sysroot::PackageDb::Rpm => "rpm's database".to_string(),
        };
        return found(
            &p.version,
            format!("{SIDECAR_PACKAGE} {} in {db}", p.version),
        );
    }
    let b = read(root, START_SCRIPT).ok()?;
    let v = version::start_script_version(&String::from_utf8_lossy(&b))?;
    found(
        &v,
        format!("ISTIO_META_ISTIO_VERSION={v} in {START_SCRIPT}"),
    )
}

/// `defaultConfig.discoveryAddress` of a mesh config.
pub fn discovery_address(yaml: &[u8]) -> Option<String> {
    MeshConfig::parse(yaml)
        .ok()?
        .discovery_address
        .filter(|s| !s.trim().is_empty())
}

/// `addr name...` lines of the VM's /etc/hosts; comments and lines a
/// resolver would ignore are skipped (unlike the bundle's strict hosts parser,
/// this file is the system's and may hold anything).
pub fn parse_hosts(text: &str) -> Vec<(IpAddr, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next().unwrap_or("");
            let mut parts = l.split_whitespace();
            let ip: IpAddr = parts.next()?.parse().ok()?;
            let names: Vec<String> = parts.map(str::to_string).collect();
            (!names.is_empty()).then_some((ip, names))
        })
        .collect()
}

/// The lines between istio-vm's markers in /etc/hosts.
pub fn managed_block(text: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for l in text.lines() {
        if l.trim() == layout::HOSTS_BEGIN {
            inside = true;
        } else if l.trim() == layout::HOSTS_END {
            inside = false;
        } else if inside {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_pilot_agent() {
        let t = Target::parse("istiod.istio-system.svc:15012", None, "x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port),
            ("istiod.istio-system.svc", 15012)
        );
        assert_eq!(t.server_name, "istiod.istio-system.svc");
        // 1.10 revisions wrote no port.
        assert_eq!(
            Target::parse("istiod-rev.istio-system.svc.cluster.local", None, "x")
                .unwrap()
                .port,
            15012
        );
        assert_eq!(
            Target::parse("localhost:15012", None, "x")
                .unwrap()
                .server_name,
            DEFAULT_SAN
        );
        let t = Target::parse("127.0.0.1:4000", Some("istiod.istio-system.svc"), "x").unwrap();
        assert_eq!(t.server_name, "istiod.istio-system.svc");
        let t = Target::parse("[fd00::2]:15012", None, "x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.addr()),
            ("fd00::2", "[fd00::2]:15012".to_string())
        );
        assert!(Target::parse("istiod:http", None, "x").is_err());
        assert!(Target::parse(":15012", None, "x").is_err());
    }

    #[test]
    fn ca_addr_needs_its_port() {
        // pilot-agent dials CA_ADDR as written: gRPC refuses a port-less one.
        let e = Target::parse_with_port("istiod.istio-system.svc", None, "CA_ADDR").unwrap_err();
        assert!(e.contains("missing port in address"), "{e}");
        assert_eq!(
            Target::parse_with_port("istiod.istio-system.svc:15012", None, "x")
                .unwrap()
                .port,
            15012
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("var/lib/istio/envoy")).unwrap();
        std::fs::write(
            d.path().join("var/lib/istio/envoy/cluster.env"),
            "CA_ADDR='istiod.istio-system.svc'\nISTIO_NAMESPACE='vm'\n",
        )
        .unwrap();
        let i = Inputs::load(d.path());
        assert!(
            i.target_error
                .as_deref()
                .is_some_and(|e| e.contains("CA_ADDR")),
            "{:?}",
            i.target_error
        );
    }

    #[test]
    fn hosts_block_and_mesh() {
        let text = "127.0.0.1 localhost\n# BEGIN istio-vm\n203.0.113.10 istiod.istio-system.svc\n# END istio-vm\n";
        assert_eq!(parse_hosts(&managed_block(text)).len(), 1);
        assert_eq!(parse_hosts(text).len(), 2);
        assert_eq!(
            discovery_address(b"defaultConfig:\n  discoveryAddress: a:1\n").as_deref(),
            Some("a:1")
        );
        assert_eq!(discovery_address(b"defaultConfig: {}\n"), None);
    }

    #[test]
    fn verify_is_the_owner_the_rules_exempt() {
        use crate::verify::net::Owner;
        let d = tempfile::tempdir().unwrap();
        let env = |text: &str| {
            std::fs::create_dir_all(d.path().join("var/lib/istio/envoy")).unwrap();
            std::fs::write(d.path().join("var/lib/istio/envoy/cluster.env"), text).unwrap();
            Inputs::load(d.path()).owner
        };
        // No istio-proxy yet (an image tree): Istio's default, as recorded.
        assert_eq!(env("ISTIO_NAMESPACE='vm'\n"), Owner(Some((1337, 1337))));
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "istio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "istio-proxy:x:996:\n").unwrap();
        // istio-proxy's uid and its group's gid, as capture renders them.
        assert_eq!(env("ISTIO_NAMESPACE='vm'\n"), Owner(Some((998, 996))));
        // cluster.env's PROXY_UID/PROXY_GID win, the first of each.
        assert_eq!(
            env("PROXY_UID='1500,1501'\nPROXY_GID='1600'\n"),
            Owner(Some((1500, 1600)))
        );
    }
}
