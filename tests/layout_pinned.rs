//! Owners and modes of every placed path, against the literal table of
//! docs/DESIGN.md (tests/common/pinned.rs), not against `layout.rs`: a
//! wrong owner or mode in the code fails here without booting anything.

mod common;
#[path = "common/apply.rs"]
mod fx;
#[path = "common/pinned.rs"]
mod pinned;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pinned::{Kind, PINNED};

const PROXY_UID: u32 = 998;
const PROXY_GID: u32 = 997;

/// A scratch Debian-like root whose own user database has istio-proxy, so
/// that install gives files to it as on a real VM.
fn root_with_proxy_user() -> tempfile::TempDir {
    let root = fx::debian_root();
    let r = root.path();
    std::fs::write(
        r.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/bash\n\
             istio-proxy:x:{PROXY_UID}:{PROXY_GID}::/var/lib/istio:/usr/sbin/nologin\n"
        ),
    )
    .unwrap();
    std::fs::write(
        r.join("etc/group"),
        format!("root:x:0:\nistio-proxy:x:{PROXY_GID}:\n"),
    )
    .unwrap();
    std::fs::write(r.join("etc/resolv.conf"), "nameserver 203.0.113.53\n").unwrap();
    root
}

/// The host path of a VM path under the scratch root (`/var/run` is the
/// root's `run`, as debian_root links it).
fn host(r: &Path, vm: &str) -> PathBuf {
    let rel = vm.trim_start_matches('/');
    let rel = rel
        .strip_prefix("var/run/")
        .map_or(rel.to_string(), |x| format!("run/{x}"));
    r.join(rel)
}

#[test]
fn every_placed_path_has_designs_owner_and_mode() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test gives files to istio-proxy and needs root (CI runs as root)"
    );
    let root = root_with_proxy_user();
    let r = root.path();
    // The package's files, as dpkg or rpm puts them: the table is what
    // install places on a VM that has the package.
    for s in istio_vm::units::SHIPPED {
        let p = r.join(s.path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, s.content).unwrap();
    }
    let report = fx::ok(&fx::install(r, common::example_bundle(), &[], &[]));

    let mut wrong = Vec::new();
    for (path, kind, owner, mode) in PINNED {
        let ids = match owner {
            &"root" => (0, 0),
            &"istio-proxy" => (PROXY_UID, PROXY_GID),
            other => panic!("pinned.rs: unknown owner {other}"),
        };
        let Ok(m) = std::fs::symlink_metadata(host(r, path)) else {
            wrong.push(format!("{path}: missing"));
            continue;
        };
        let is = if m.is_dir() { Kind::Dir } else { Kind::File };
        let want_kind = if *kind == Kind::Dir {
            Kind::Dir
        } else {
            Kind::File
        };
        let got = (is, (m.uid(), m.gid()), m.mode() & 0o7777);
        if got != (want_kind, ids, *mode) {
            wrong.push(format!(
                "{path}: {:?} {}:{} {:04o}, DESIGN.md says {:?} {owner} {mode:04o}",
                got.0, got.1.0, got.1.1, got.2, want_kind
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Every path the install reports placing is in the table: a path added
    // to the code needs a row in DESIGN.md (and so in pinned.rs).
    let pinned: BTreeSet<&str> = PINNED.iter().map(|(p, ..)| *p).collect();
    let placed: Vec<String> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .filter_map(|id| id.split_once(':'))
        .filter(|(k, _)| matches!(*k, "file" | "dir" | "hosts"))
        .map(|(_, p)| p.to_string())
        .collect();
    assert!(placed.len() >= 20, "{report:#}");
    let unlisted: Vec<&String> = placed
        .iter()
        .filter(|p| !pinned.contains(p.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "placed but not in docs/DESIGN.md \"Where things go\": {unlisted:?}"
    );
}
