//! Root-confined path resolution: every path the tool touches is resolved
//! under `--root` as if chrooted there. Symlinks in parent directories are
//! followed *inside* the root (a Debian tree's `var/run -> /run` means
//! `ROOT/run`), `..` never climbs above it, and the final component is never
//! followed: the callers refuse a symlink there.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Symlink hops allowed in one resolution (the kernel's ELOOP limit).
const MAX_HOPS: u32 = 40;

#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
    /// Owner of the root directory: `/` is root's; a scratch tree is its
    /// builder's. Parent symlinks must belong to uid 0 or to this owner.
    trusted_uid: u32,
}

/// A path after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Absolute path inside the root with no symlink among its parents.
    pub real: String,
    /// The same path on this host (root prefixed).
    pub host: PathBuf,
}

impl Root {
    pub fn new(dir: &Path) -> Result<Root> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--root {}: cannot open it", dir.display()))?;
        let meta = std::fs::metadata(&dir)
            .with_context(|| format!("--root {}: cannot stat it", dir.display()))?;
        if !meta.is_dir() {
            bail!("--root {} is not a directory", dir.display());
        }
        Ok(Root {
            dir,
            trusted_uid: meta.uid(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live machine: `/`, and not a chroot (there, `/` is an image and
    /// the host's netfilter and systemd are not this root's).
    pub fn is_slash(&self) -> bool {
        self.dir == Path::new("/") && !crate::chroot::in_chroot()
    }

    /// Host path of an already resolved absolute path.
    pub fn host(&self, real: &str) -> PathBuf {
        let rel = real.trim_start_matches('/');
        if rel.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(rel)
        }
    }

    /// Resolve `path` (absolute, as on the VM) under the root.
    pub fn resolve(&self, path: &str) -> Result<Resolved> {
        let mut queue: std::collections::VecDeque<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            if queue.is_empty() {
                // Final component: never followed.
                cur.push(c);
                break;
            }
            let mut probe = cur.clone();
            probe.push(c.clone());
            let host = self.host(&join(&probe));
            let meta = match std::fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    cur.push(c);
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("resolving {path}: {}", join(&probe)));
                }
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                if meta.uid() != 0 && meta.uid() != self.trusted_uid {
                    bail!(
                        "refusing {path}: its parent {} is a symbolic link owned by uid {}, \
                         not by root; replace it with a directory or a root-owned link",
                        join(&probe),
                        meta.uid()
                    );
                }
                hops += 1;
                if hops > MAX_HOPS {
                    bail!("resolving {path}: too many levels of symbolic links");
                }
                let target = std::fs::read_link(&host)
                    .with_context(|| format!("reading link {}", join(&probe)))?;
                let target = target.to_string_lossy().to_string();
                if target.starts_with('/') {
                    cur.clear();
                }
                for (i, t) in target.split('/').filter(|t| !t.is_empty()).enumerate() {
                    queue.insert(i, t.to_string());
                }
            } else if ft.is_dir() {
                cur.push(c);
            } else {
                bail!(
                    "cannot place {path}: {} is not a directory; move it away",
                    join(&probe)
                );
            }
        }
        let real = join(&cur);
        Ok(Resolved {
            host: self.host(&real),
            real,
        })
    }
}

fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        std::fs::create_dir_all(t.path().join("run")).unwrap();
        std::fs::create_dir_all(t.path().join("var")).unwrap();
        symlink("/run", t.path().join("var/run")).unwrap();
        let x = r.resolve("/var/run/secrets/tokens/istio-token").unwrap();
        assert_eq!(x.real, "/run/secrets/tokens/istio-token");
        assert_eq!(x.host, r.dir().join("run/secrets/tokens/istio-token"));
        // Escapes are clamped to the root.
        symlink("../../../../etc", t.path().join("esc")).unwrap();
        assert_eq!(r.resolve("/esc/passwd").unwrap().real, "/etc/passwd");
        assert_eq!(r.resolve("/../../etc/hosts").unwrap().real, "/etc/hosts");
        // Relative links.
        std::fs::create_dir_all(t.path().join("var/lib/istio")).unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        symlink("../var/lib/istio", t.path().join("etc/istio")).unwrap();
        assert_eq!(
            r.resolve("/etc/istio/config/mesh").unwrap().real,
            "/var/lib/istio/config/mesh"
        );
        // Final component is not followed.
        assert_eq!(r.resolve("/etc/istio").unwrap().real, "/etc/istio");
        // Loops end.
        symlink("/loop", t.path().join("loop")).unwrap();
        assert!(r.resolve("/loop/x").is_err());
    }
}
