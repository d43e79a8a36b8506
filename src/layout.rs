//! Where each thing goes on the VM, with owner and mode (DESIGN.md "Where
//! things go"). Paths are absolute as on the VM; callers join them under
//! `--root` through the apply layer, never with `Path::join` directly.

/// The user and group Istio's sidecar runs as.
pub const PROXY_USER: &str = "istio-proxy";

pub const ROOT_CERT: &str = "/etc/certs/root-cert.pem";
pub const TOKEN: &str = "/var/run/secrets/tokens/istio-token";
/// Survives reboots (`/run` is tmpfs); tmpfiles.d copies it back at boot.
pub const TOKEN_PERSISTENT: &str = "/var/lib/istio-vm/istio-token";
pub const CLUSTER_ENV: &str = "/var/lib/istio/envoy/cluster.env";
pub const MESH_CONFIG: &str = "/etc/istio/config/mesh";
pub const ETC_HOSTS: &str = "/etc/hosts";
pub const HOSTS_BEGIN: &str = "# BEGIN istio-vm";
pub const HOSTS_END: &str = "# END istio-vm";

/// Package content (`packaging/`, embedded in `units::SHIPPED`): a copied
/// binary without the package places them under /etc instead.
pub const CAPTURE_UNIT: &str = "/usr/lib/systemd/system/istio-vm-capture.service";
pub const TMPFILES: &str = "/usr/lib/tmpfiles.d/istio-vm.conf";
/// The one definition of istio-proxy (the maintainer scripts apply it).
pub const SYSUSERS: &str = "/usr/lib/sysusers.d/istio-vm.conf";
/// Per VM: `install` writes them, `uninstall` removes them.
pub const TOKEN_TMPFILES: &str = "/etc/tmpfiles.d/istio-vm-token.conf";
pub const ISTIO_DROPIN: &str = "/etc/systemd/system/istio.service.d/istio-vm.conf";

pub const STATE_DIR: &str = "/var/lib/istio-vm";
pub const STATE_FILE: &str = "/var/lib/istio-vm/state.json";
pub const BACKUP_DIR: &str = "/var/lib/istio-vm/backup";
/// Present only while a change is in progress (or was interrupted).
pub const JOURNAL: &str = "/var/lib/istio-vm/journal.json";
pub const CAPTURE_DIR: &str = "/var/lib/istio-vm/capture";
pub const LOCK_FILE: &str = "/run/lock/istio-vm.lock";
pub const CONFIG_FILE: &str = "/etc/istio-vm/config.toml";

pub const ISTIO_LOG: &str = "/var/log/istio/istio.log";
pub const ISTIO_ERR_LOG: &str = "/var/log/istio/istio.err.log";

/// Who owns a placed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Owner {
    Root,
    IstioProxy,
}

/// Directories the sidecar needs, owned by istio-proxy (mode 0755).
pub const PROXY_DIRS: &[&str] = &[
    "/etc/certs",
    "/var/lib/istio",
    "/var/lib/istio/envoy",
    "/etc/istio/proxy",
    "/etc/istio/config",
    "/var/run/secrets",
    "/var/run/secrets/tokens",
    "/var/log/istio",
];

/// A bundle file's destination(s), owner and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Name of the file in the bundle.
    pub bundle_file: &'static str,
    pub path: &'static str,
    pub owner: Owner,
    pub mode: u32,
    /// Never shown in output or diffs.
    pub secret: bool,
}

pub const PLACEMENTS: &[Placement] = &[
    Placement {
        bundle_file: "root-cert.pem",
        path: ROOT_CERT,
        owner: Owner::IstioProxy,
        mode: 0o644,
        secret: false,
    },
    Placement {
        bundle_file: "istio-token",
        path: TOKEN,
        owner: Owner::IstioProxy,
        mode: 0o600,
        secret: true,
    },
    Placement {
        bundle_file: "istio-token",
        path: TOKEN_PERSISTENT,
        owner: Owner::IstioProxy,
        mode: 0o600,
        secret: true,
    },
    Placement {
        bundle_file: "cluster.env",
        path: CLUSTER_ENV,
        owner: Owner::IstioProxy,
        mode: 0o644,
        secret: false,
    },
    Placement {
        bundle_file: "mesh.yaml",
        path: MESH_CONFIG,
        owner: Owner::IstioProxy,
        mode: 0o644,
        secret: false,
    },
];
