//! Which Istio sidecar is installed, and what that version's
//! `istio-start.sh` and pilot-agent make of cluster.env and the mesh file.
//!
//! Pure: the caller reads the package database (`sysroot::installed_package`)
//! or the script and hands the text in. Each rule cites the Istio source and the tag it was read at.

use std::collections::BTreeMap;

/// An Istio release, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// `1.10.6`, a package version like `1:1.10.6-1` or `1.24.0~rc.1-1`, or
    /// a pre-release `1.29.0-beta.0`; the patch may be missing (`1.12`).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim();
        let s = s.split_once(':').map_or(s, |(_, v)| v);
        let core: String = s
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut it = core.split('.').filter(|p| !p.is_empty());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = it.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Version::new(major, minor, patch))
    }

    fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The installed sidecar as verify found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: Version,
    /// Where the version came from, for the report.
    pub source: String,
}

/// The version an installed `istio-start.sh` announces: up to 1.2x it
/// exports `ISTIO_META_ISTIO_VERSION="1.12.0"`
/// (tools/packaging/common/istio-start.sh@1.10.0, @1.12.0; gone at master).
pub fn start_script_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let v = l
            .strip_prefix("export ")
            .unwrap_or(l)
            .strip_prefix("ISTIO_META_ISTIO_VERSION=")?;
        let v = v.trim().trim_matches(['"', '\'']);
        Version::parse(v).map(|_| v.to_string())
    })
}

/// Where a CA address came from when istio-start.sh chose it (1.12+).
pub const CA_DEFAULT_SOURCE: &str = "istio-start.sh's CA_ADDR default";

/// An address (`host:port`) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub addr: String,
    pub source: &'static str,
}

/// What the agent of `version` dials, and the names it verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub discovery: Addr,
    pub ca: Addr,
    /// `ISTIOD_SAN`, when it overrides the server name verified on the XDS
    /// connection.
    pub xds_san: Option<String>,
    /// `ISTIOD_SAN` set but ignored by this version or for the CA.
    pub san_ignored: Option<&'static str>,
    /// The mesh file's discoveryAddress, when this version ignores it.
    pub mesh_ignored: Option<String>,
}

fn get<'a>(env: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    env.get(k).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// `ISTIO_SYSTEM_NAMESPACE` as istio-start.sh defaults it.
fn system_ns(env: &BTreeMap<String, String>) -> &str {
    get(env, "ISTIO_SYSTEM_NAMESPACE").unwrap_or("istio-system")
}

/// Discovery and CA addresses for `version` (None: no sidecar installed,
/// current semantics), from cluster.env and the mesh file's
/// `defaultConfig.discoveryAddress`.
pub fn plan(
    version: Option<Version>,
    env: &BTreeMap<String, String>,
    mesh_discovery: Option<&str>,
) -> Plan {
    let ns = system_ns(env);
    let mesh = mesh_discovery.map(str::trim).filter(|s| !s.is_empty());
    let san = get(env, "ISTIOD_SAN");
    let env_ca = get(env, "CA_ADDR").map(|a| Addr {
        addr: a.to_string(),
        source: "CA_ADDR in cluster.env",
    });
    if version.is_some_and(|v| !v.at_least(1, 12)) {
        // tools/packaging/common/istio-start.sh@1.10.0 (same @1.11.0):
        // PILOT_ADDRESS defaults to istiod.${ISTIO_SYSTEM_NAMESPACE}.svc:
        // ${ISTIO_PILOT_PORT:-15012} and is always exported as
        // PROXY_CONFIG's discoveryAddress, which pilot-agent lays over the
        // mesh file (pilot/cmd/pilot-agent/config/config.go@1.10.0
        // getMeshConfig); CA_ADDR=${CA_ADDR:-${PILOT_ADDRESS}}.
        let discovery = match get(env, "PILOT_ADDRESS") {
            Some(a) => Addr {
                addr: a.to_string(),
                source: "PILOT_ADDRESS in cluster.env",
            },
            None => Addr {
                addr: format!(
                    "istiod.{ns}.svc:{}",
                    get(env, "ISTIO_PILOT_PORT").unwrap_or("15012")
                ),
                source: "istio-start.sh's PILOT_ADDRESS default",
            },
        };
        let ca = env_ca.unwrap_or_else(|| Addr {
            addr: discovery.addr.clone(),
            source: "istio-start.sh: CA_ADDR defaults to PILOT_ADDRESS",
        });
        return Plan {
            mesh_ignored: mesh.filter(|m| *m != discovery.addr).map(str::to_string),
            discovery,
            ca,
            xds_san: None,
            // ISTIOD_SAN first appears in pilot/cmd/pilot-agent/options/options.go@1.12.0.
            san_ignored: san.map(|_| "ISTIOD_SAN does not exist before Istio 1.12"),
        };
    }
    // tools/packaging/common/istio-start.sh@1.12.0 (same at master): only
    // PILOT_ADDRESS, else ISTIO_PILOT_PORT, goes into PROXY_CONFIG; without
    // them the mesh file's discoveryAddress applies (default
    // istiod.istio-system.svc:15012, pkg/config/mesh/mesh.go). CA_ADDR is
    // always exported: ${CA_ADDR:-${CUSTOM_PILOT_ADDRESS:-istiod.${ISTIO_SYSTEM_NAMESPACE}.svc:15012}},
    // never the mesh file's address.
    let custom = match (get(env, "PILOT_ADDRESS"), get(env, "ISTIO_PILOT_PORT")) {
        (Some(a), _) => Some(Addr {
            addr: a.to_string(),
            source: "PILOT_ADDRESS in cluster.env",
        }),
        (None, Some(p)) => Some(Addr {
            addr: format!("istiod.{ns}.svc:{p}"),
            source: "ISTIO_PILOT_PORT in cluster.env",
        }),
        _ => None,
    };
    let discovery = custom.clone().unwrap_or_else(|| match mesh {
        Some(m) => Addr {
            addr: m.to_string(),
            source: "discoveryAddress in the mesh config",
        },
        None => Addr {
            addr: super::inputs::DEFAULT_DISCOVERY.to_string(),
            source: "Istio's default",
        },
    });
    let ca = env_ca.or(custom).unwrap_or_else(|| Addr {
        addr: format!("istiod.{ns}.svc:15012"),
        source: CA_DEFAULT_SOURCE,
    });
    Plan {
        mesh_ignored: None,
        discovery,
        ca,
        // pkg/istio-agent/xds_proxy.go@1.12.0 sets the XDS ServerName from
        // ISTIOD_SAN; pilot/cmd/pilot-agent/options/security.go@1.12.0 uses it
        // for the CA only when CA_ADDR is empty, which istio-start.sh never
        // leaves it.
        xds_san: san.map(str::to_string),
        san_ignored: san
            .map(|_| "ISTIOD_SAN does not apply to the CA connection (CA_ADDR is always set)"),
    }
}

/// `POD_NAMESPACE=${ISTIO_NAMESPACE:-default}` on pilot-agent's command
/// line overrides any POD_NAMESPACE in cluster.env
/// (tools/packaging/common/istio-start.sh@1.10.0 and at master).
pub fn agent_namespace(env: &BTreeMap<String, String>) -> String {
    get(env, "ISTIO_NAMESPACE").unwrap_or("default").to_string()
}

/// Whether the agent of `version` falls back to the token when the workload
/// certificate in /etc/certs has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredCert {
    /// security/pkg/nodeagent/caclient/providers/citadel/client.go@1.11.0
    /// (`cert expired, using token instead`); @1.10.0 presents it anyway.
    pub ca_uses_token: bool,
    /// pkg/istio-agent/xds_proxy.go@1.16.0; @1.15.0 presents it anyway.
    pub xds_uses_token: bool,
}

pub fn expired_cert(version: Option<Version>) -> ExpiredCert {
    match version {
        None => ExpiredCert {
            ca_uses_token: true,
            xds_uses_token: true,
        },
        Some(v) => ExpiredCert {
            ca_uses_token: v.at_least(1, 11),
            xds_uses_token: v.at_least(1, 16),
        },
    }
}

/// The `ISTIO_VERSION` node metadata the agent sends: its own version, which
/// istiod uses to generate config for that Envoy (istio-start.sh@1.10.0
/// exports ISTIO_META_ISTIO_VERSION; pkg/model/proxy.go `IstioVersion`).
pub fn node_version(installed: Option<&Installed>) -> Option<String> {
    installed.map(|i| i.version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const V1_10: Option<Version> = Some(Version::new(1, 10, 6));
    const V1_12: Option<Version> = Some(Version::new(1, 12, 0));

    #[test]
    fn versions_parse_like_packages_write_them() {
        assert_eq!(Version::parse("1.10.6"), Some(Version::new(1, 10, 6)));
        assert_eq!(Version::parse("1:1.24.2-1"), Some(Version::new(1, 24, 2)));
        assert_eq!(
            Version::parse("1.29.0-beta.0"),
            Some(Version::new(1, 29, 0))
        );
        assert_eq!(Version::parse("1.12"), Some(Version::new(1, 12, 0)));
        assert_eq!(Version::parse("x"), None);
        assert!(Version::new(1, 9, 9) < Version::new(1, 10, 0));
    }

    #[test]
    fn start_script_announces_its_version() {
        let s = "#!/bin/bash\nset -e\n\n# Load optional config variables\nexport ISTIO_META_ISTIO_VERSION=\"1.12.0\"\n";
        assert_eq!(start_script_version(s).as_deref(), Some("1.12.0"));
        assert_eq!(start_script_version("#!/bin/bash\n"), None);
    }

    #[test]
    fn before_1_12_the_mesh_file_is_ignored() {
        let p = plan(V1_10, &env(&[]), Some("istiod-1-10.istio-system.svc:15012"));
        assert_eq!(p.discovery.addr, "istiod.istio-system.svc:15012");
        assert_eq!(p.ca.addr, "istiod.istio-system.svc:15012");
        assert_eq!(
            p.mesh_ignored.as_deref(),
            Some("istiod-1-10.istio-system.svc:15012")
        );
        let p = plan(
            V1_10,
            &env(&[
                ("ISTIO_SYSTEM_NAMESPACE", "mesh"),
                ("ISTIO_PILOT_PORT", "15010"),
            ]),
            None,
        );
        assert_eq!(p.discovery.addr, "istiod.mesh.svc:15010");
        let p = plan(
            V1_10,
            &env(&[("PILOT_ADDRESS", "a:1"), ("ISTIOD_SAN", "x")]),
            None,
        );
        assert_eq!(
            (p.discovery.addr.as_str(), p.ca.addr.as_str()),
            ("a:1", "a:1")
        );
        assert_eq!(p.xds_san, None);
        assert!(p.san_ignored.is_some());
    }

    #[test]
    fn from_1_12_the_mesh_file_applies_but_not_to_the_ca() {
        let p = plan(V1_12, &env(&[]), Some("istiod-rev.istio-system.svc:15012"));
        assert_eq!(p.discovery.addr, "istiod-rev.istio-system.svc:15012");
        assert_eq!(p.ca.addr, "istiod.istio-system.svc:15012");
        assert_eq!(p.mesh_ignored, None);
        let p = plan(None, &env(&[("ISTIO_PILOT_PORT", "15013")]), Some("m:1"));
        assert_eq!(p.discovery.addr, "istiod.istio-system.svc:15013");
        assert_eq!(p.ca.addr, "istiod.istio-system.svc:15013");
        let p = plan(
            V1_12,
            &env(&[
                ("CA_ADDR", "ca:2"),
                ("ISTIOD_SAN", "istiod.istio-system.svc"),
            ]),
            None,
        );
        assert_eq!(p.discovery.addr, "istiod.istio-system.svc:15012");
        assert_eq!(p.ca.addr, "ca:2");
        assert_eq!(p.xds_san.as_deref(), Some("istiod.istio-system.svc"));
    }

    #[test]
    fn namespace_and_expired_certificates() {
        assert_eq!(agent_namespace(&env(&[("POD_NAMESPACE", "x")])), "default");
        assert_eq!(agent_namespace(&env(&[("ISTIO_NAMESPACE", "vm")])), "vm");
        let e = expired_cert(V1_10);
        assert!(!e.ca_uses_token && !e.xds_uses_token);
        let e = expired_cert(Some(Version::new(1, 11, 0)));
        assert!(e.ca_uses_token && !e.xds_uses_token);
        assert!(expired_cert(Some(Version::new(1, 16, 0))).xds_uses_token);
        assert!(expired_cert(None).xds_uses_token);
    }
}
