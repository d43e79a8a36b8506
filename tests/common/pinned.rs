//! Every path `install` places, with its owner and mode, written out by hand
//! from docs/DESIGN.md "Where things go" — deliberately not taken from
//! `layout.rs` or `units.rs`, so that a wrong layout fails the tests that
//! use this table (tests/layout_pinned.rs, tests/e2e_systemd.rs,
//! tests/common/fleet.rs). tests/design_doc.rs checks it equals DESIGN.md's
//! table row for row. Include it with `#[path = "common/pinned.rs"] mod pinned;`.
#![allow(dead_code)]

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    /// The istio-vm block inside a file that may be someone else's: owner
    /// and mode are those of a file istio-vm creates; an existing file keeps
    /// its own.
    Block,
}

/// (path on the VM, kind, owner, mode), in docs/DESIGN.md's order.
pub const PINNED: &[(&str, Kind, &str, u32)] = &[
    ("/etc/certs", Kind::Dir, "istio-proxy", 0o755),
    ("/etc/certs/root-cert.pem", Kind::File, "istio-proxy", 0o644),
    ("/etc/istio/config", Kind::Dir, "istio-proxy", 0o755),
    ("/etc/istio/config/mesh", Kind::File, "istio-proxy", 0o644),
    ("/etc/istio/proxy", Kind::Dir, "istio-proxy", 0o755),
    ("/etc/hosts", Kind::Block, "root", 0o644),
    (
        "/etc/systemd/system/istio.service.d/istio-vm.conf",
        Kind::File,
        "root",
        0o644,
    ),
    (
        "/etc/systemd/system/istio-vm-verify.service.d/istio-vm.conf",
        Kind::File,
        "root",
        0o644,
    ),
    (
        "/etc/systemd/system/istio-vm-verify.timer.d/istio-vm.conf",
        Kind::File,
        "root",
        0o644,
    ),
    (
        "/etc/tmpfiles.d/istio-vm-token.conf",
        Kind::File,
        "root",
        0o644,
    ),
    ("/var/lib/istio", Kind::Dir, "istio-proxy", 0o755),
    ("/var/lib/istio/envoy", Kind::Dir, "istio-proxy", 0o755),
    (
        "/var/lib/istio/envoy/cluster.env",
        Kind::File,
        "istio-proxy",
        0o644,
    ),
    ("/var/lib/istio-vm", Kind::Dir, "root", 0o755),
    (
        "/var/lib/istio-vm/istio-token",
        Kind::File,
        "istio-proxy",
        0o600,
    ),
    ("/var/lib/istio-vm/state.json", Kind::File, "root", 0o644),
    ("/var/lib/istio-vm/backup", Kind::Dir, "root", 0o700),
    ("/var/lib/istio-vm/capture", Kind::Dir, "root", 0o700),
    (
        "/var/lib/istio-vm/capture/rules-v4",
        Kind::File,
        "root",
        0o600,
    ),
    ("/var/log/istio", Kind::Dir, "istio-proxy", 0o755),
    ("/var/run/secrets", Kind::Dir, "istio-proxy", 0o755),
    ("/var/run/secrets/tokens", Kind::Dir, "istio-proxy", 0o755),
    (
        "/var/run/secrets/tokens/istio-token",
        Kind::File,
        "istio-proxy",
        0o600,
    ),
];

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "dir",
        Kind::File => "file",
        Kind::Block => "block",
    }
}

/// The rows a shell can check with `stat -c '%U %G %a %F' PATH`: owner,
/// group (same name), mode in octal without leading zero, and file type.
pub fn stat_line(kind: Kind, owner: &str, mode: u32) -> String {
    let ty = match kind {
        Kind::Dir => "directory",
        Kind::File | Kind::Block => "regular file",
    };
    format!("{owner} {owner} {mode:o} {ty}")
}
