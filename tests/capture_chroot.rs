//! Never touch the host from a chroot. Image builders run `dpkg -r` (and so
//! our prerm) inside a chroot that shares the host's network namespace and
//! has no running systemd. Here: a copy of the booted-Debian tree (with its
//! own iptables and nft), a network namespace standing in for "the host"
//! that holds sentinel ISTIO_* chains in iptables-nft, iptables-legacy and
//! a native nft table, and `chroot TREE istio-vm uninstall` / the package's
//! prerm run inside it: the sentinels stay byte-identical, and the tree's
//! files are still restored.

#[path = "common/e2e.rs"]
mod e2e;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sh(cmd: &str) -> Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.0));
    }
}

/// Everything netfilter holds in the namespace.
fn sentinels(ns: &str) -> String {
    must(&format!(
        "ip netns exec {ns} sh -c 'iptables-nft-save | grep -v \"^#\"; ip6tables-nft-save | grep -v \"^#\"; \
         iptables-legacy-save | grep -v \"^#\"; nft list ruleset'"
    ))
}

fn bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/bundle")
}

fn tree_files(root: &Path) -> String {
    let skip = "-not -path 'var/lib/apt/*' -not -path 'var/lib/dpkg/*' -not -path 'var/cache/*' \
                -not -path 'var/log/*' -not -path 'var/tmp/*'";
    must(&format!(
        "cd {} && find etc var/lib usr/lib/systemd -xdev {skip} -printf '%p %y %m %U:%G %l\n' | sort && \
         find etc var/lib usr/lib/systemd -xdev -type f {skip} -print0 | sort -z | xargs -0 sha256sum",
        root.display()
    ))
}

#[test]
fn uninstall_and_prerm_in_a_chroot_leave_the_hosts_netfilter_alone() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (CI runs as root)"
    );
    let vm = e2e::Vm::new("chroot");
    let root = vm.root();
    e2e::put(
        &vm,
        Path::new(env!("CARGO_BIN_EXE_istio-vm")),
        "/usr/bin/istio-vm",
        0o755,
    );
    let prerm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("debian/prerm");
    e2e::put(&vm, &prerm, "/var/tmp/prerm", 0o755);
    for bin in ["iptables-nft-save", "iptables-legacy-save", "systemctl"] {
        assert!(
            sh(&format!(
                "chroot {} sh -c 'command -v {bin}'",
                root.display()
            ))
            .status
            .success(),
            "the tree has no {bin}: the test would prove nothing"
        );
    }

    let ns = Netns(format!("ivmchroot-{}", std::process::id()));
    must(&format!("ip netns add {}", ns.0));
    must(&format!(
        "ip netns exec {} sh -c 'iptables-nft -t nat -N ISTIO_OUTPUT && \
         iptables-nft -t nat -A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001 && \
         iptables-nft -t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT && \
         iptables-nft -t nat -N ISTIO_INBOUND && iptables-nft -t nat -A PREROUTING -p tcp -j ISTIO_INBOUND && \
         iptables-legacy -t mangle -N ISTIO_DIVERT && iptables-legacy -t mangle -A ISTIO_DIVERT -j ACCEPT && \
         nft add table inet istio-proxy-nat && nft add chain inet istio-proxy-nat output'",
        ns.0
    ));
    let before_nf = sentinels(&ns.0);
    let before_tree = tree_files(&root);

    for (what, cmd) in [
        ("istio-vm uninstall", "/usr/bin/istio-vm uninstall"),
        ("the package's prerm", "/bin/sh /var/tmp/prerm remove"),
    ] {
        // The image as a builder leaves it: installed with --root.
        let o = Command::new(env!("CARGO_BIN_EXE_istio-vm"))
            .arg("--root")
            .arg(&root)
            .args(["install", "--bundle"])
            .arg(bundle())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "install --root: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(root.join("var/lib/istio-vm/capture/rules-v4").exists());
        assert_ne!(tree_files(&root), before_tree);

        // In the namespace, with /proc mounted in the tree (as debootstrap
        // and mmdebstrap do): chroot, then the command.
        let out = sh(&format!(
            "ip netns exec {ns} unshare -m sh -c 'mount -t proc proc {r}/proc && \
             chroot {r} {cmd}'",
            ns = ns.0,
            r = root.display()
        ));
        assert!(
            out.status.success(),
            "{what} in the chroot failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            sentinels(&ns.0),
            before_nf,
            "{what} in a chroot changed the host's netfilter"
        );
        assert_eq!(
            tree_files(&root),
            before_tree,
            "{what} did not restore the chroot's files"
        );
    }
}
