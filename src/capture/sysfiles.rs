//! Reading the capture inputs from a root: the placed cluster.env,
//! resolv.conf, the istio-proxy user and group. All of it goes through
//! [`crate::sysroot`]: symlinks resolve inside the root as in a chroot (a
//! Debian image's `/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf`
//! means `ROOT/run/...`), reads are bounded, and the istio-proxy ids come
//! from the same source apply uses (NSS when live).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

use crate::sysroot::Sysroot;

/// Resolve `path` (absolute, as on the VM) under `root` for writing: parent
/// links followed within the root, the final component kept.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    Ok(Sysroot::new(root)?.resolve(path)?.host)
}

/// Read a text file under the root; `Ok(None)` if it does not exist.
pub fn read_optional(root: &Path, path: &str) -> Result<Option<String>> {
    Sysroot::new(root)?.read_string(path)
}

pub use crate::sysroot::lookup_id;

/// uid of user `user` and gid of the group of that name (NSS when live, the
/// root's `/etc/passwd` and `/etc/group` otherwise, so a baked image's ids
/// are used, not the build host's).
pub fn proxy_ids(root: &Path, user: &str) -> Result<(Option<u32>, Option<u32>)> {
    let r = Sysroot::new(root)?;
    Ok((r.user(user)?.map(|u| u.uid), r.group(user)?))
}

/// A global-scope IPv6 address exists in this network namespace
/// (`/proc/net/if_inet6`, scope field 00).
pub fn host_has_global_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 6 && f[3] == "00" && f[5] != "lo"
            })
        })
        .unwrap_or(false)
}

/// The inputs of a render, read from `root`.
pub struct Read {
    pub env: BTreeMap<String, String>,
    pub resolv: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub host_ipv6: bool,
}

/// Read the capture inputs under `root`: the placed cluster.env (required),
/// resolv.conf, the istio-proxy ids; `live` also probes the host's IPv6.
pub fn read_inputs(root: &Path, live: bool) -> Result<Read> {
    let env_text = read_optional(root, crate::layout::CLUSTER_ENV)?.ok_or_else(|| {
        anyhow!(
            "no cluster.env at {}: run `istio-vm install --bundle DIR` first (capture reads the \
             placed file)",
            root.join(crate::layout::CLUSTER_ENV.trim_start_matches('/'))
                .display()
        )
    })?;
    let resolv = Sysroot::new(root)?.resolv_conf()?;
    let (uid, gid) = proxy_ids(root, crate::layout::PROXY_USER)?;
    let path = root.join(crate::layout::CLUSTER_ENV.trim_start_matches('/'));
    let env = crate::bundle::ClusterEnv::parse(env_text.as_bytes())
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .to_map();
    Ok(Read {
        env,
        resolv,
        uid,
        gid,
        // Under --root the target host is unknown; DUAL_STACK still applies.
        host_ipv6: live && host_has_global_ipv6(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_cluster_env_is_read_as_bash_would() {
        let d = tempfile::tempdir().unwrap();
        let envdir = d.path().join("var/lib/istio/envoy");
        std::fs::create_dir_all(&envdir).unwrap();
        std::fs::write(
            envdir.join("cluster.env"),
            "ISTIO_INBOUND_PORTS='*'\nISTIO_SERVICE_CIDR='*'\nISTIO_META_DNS_CAPTURE='true'\n",
        )
        .unwrap();
        let r = read_inputs(d.path(), false).unwrap();
        assert_eq!(r.env["ISTIO_INBOUND_PORTS"], "*");
        assert_eq!(r.env["ISTIO_META_DNS_CAPTURE"], "true");
        assert!(!r.host_ipv6);
        std::fs::write(
            envdir.join("cluster.env"),
            "ISTIO_INBOUND_PORTS=$(reboot)\n",
        )
        .unwrap();
        let e = read_inputs(d.path(), false).err().unwrap();
        assert!(format!("{e:#}").contains("cluster.env"), "{e:#}");
    }

    #[test]
    fn missing_cluster_env_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let e = read_inputs(d.path(), false).err().unwrap();
        assert!(format!("{e:#}").contains("istio-vm install"), "{e:#}");
    }

    #[test]
    fn absolute_symlinks_stay_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run/systemd/resolve")).unwrap();
        std::fs::write(
            root.join("run/systemd/resolve/stub-resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/var/run", root.join("var-run-link")).unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        let text = read_optional(root, "/etc/resolv.conf").unwrap().unwrap();
        assert_eq!(text, "nameserver 127.0.0.53\n");
        assert!(read_optional(root, "/etc/nothing").unwrap().is_none());
        // `..` cannot climb out of the root.
        std::os::unix::fs::symlink("../../../../etc/passwd", root.join("etc/up")).unwrap();
        std::fs::write(root.join("etc/passwd"), "in the root\n").unwrap();
        assert_eq!(
            read_optional(root, "/etc/up").unwrap().unwrap(),
            "in the root\n"
        );
        // For writing, the final link is never followed.
        let p = resolve_in_root(root, "/etc/up").unwrap();
        assert_eq!(p, root.canonicalize().unwrap().join("etc/up"));
    }

    #[test]
    fn ids_from_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n";
        assert_eq!(lookup_id(passwd, "istio-proxy"), Some(998));
        assert_eq!(lookup_id(passwd, "nobody"), None);
        assert_eq!(lookup_id("istio-proxy:x:997:\n", "istio-proxy"), Some(997));
    }
}
