//! Helpers for the install/uninstall tests: scratch roots shaped like a
//! Debian tree, full tree listings with digests, and running the binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Output;

use sha2::{Digest, Sha256};

/// A scratch root: `etc/hosts`, `run/lock`, and `var/run -> /run` as in a
/// Debian tree (so the token lands in `ROOT/run/...`).
pub fn debian_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    let r = t.path();
    for d in ["etc", "run/lock", "var/lib", "var/log"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    symlink("/run", r.join("var/run")).unwrap();
    std::fs::write(
        r.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n# The following lines are desirable for IPv6 capable hosts\n::1 localhost ip6-localhost\n",
    )
    .unwrap();
    t
}

/// The example bundle copied to a temp dir, so a test can change a file.
pub fn bundle_copy() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(crate::common::example_bundle()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), t.path().join(e.file_name())).unwrap();
    }
    t
}

/// Paths a tree comparison ignores: none (under `--root` the lock file goes
/// when a run ends; a test that holds it has it in both listings).
fn ignored(_rel: &str) -> bool {
    false
}

/// One line per path: type, mode, owner, size, sha256 or link target. With
/// `times`, also inode, mtime and ctime (to prove nothing was rewritten).
pub fn tree(root: &Path, times: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, times, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, times: bool, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
        if ignored(&rel) {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("link->{}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            "dir".to_string()
        } else if !ft.is_file() {
            // A FIFO or device a test planted: never opened (it would block).
            format!("special {:o}", m.mode() & 0o170000)
        } else {
            let bytes = std::fs::read(&p).unwrap();
            format!("file {} {:x}", bytes.len(), Sha256::digest(&bytes))
        };
        let mut line = format!(
            "{what} mode={:o} owner={}:{}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        );
        if times && !ft.is_symlink() {
            line.push_str(&format!(
                " ino={} mtime={}.{} ctime={}.{}",
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ));
        }
        out.insert(rel, line);
        if ft.is_dir() {
            walk(root, &p, times, out);
        }
    }
}

/// Readable difference of two listings, for assertion messages.
pub fn tree_diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => s.push_str(&format!("- {k}: {v}\n")),
            Some(w) if w != v => s.push_str(&format!("~ {k}: {v}\n       => {w}\n")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            s.push_str(&format!("+ {k}: {v}\n"));
        }
    }
    s
}

/// Listing without our bookkeeping that differs between equivalent runs
/// (transaction ids of backups, state.json).
pub fn placed(root: &Path) -> BTreeMap<String, String> {
    tree(root, false)
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("var/lib/istio-vm/backup/") && k != "var/lib/istio-vm/state.json"
        })
        .collect()
}

pub fn run(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = crate::common::istio_vm();
    c.arg("--root").arg(root).args(args);
    c.env_remove("ISTIO_VM_FAILPOINT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run istio-vm")
}

pub fn install(root: &Path, bundle: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let b = bundle.to_str().unwrap();
    let mut args = vec!["--output", "json", "install", "--bundle", b];
    args.extend_from_slice(extra);
    run(root, &args, env)
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

pub fn ok(o: &Output) -> serde_json::Value {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    json(o)
}

/// Step ids with the given status.
pub fn steps_with(v: &serde_json::Value, status: &str) -> Vec<String> {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == status)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

pub fn host(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}
