//! Fleet e2e helpers on top of the booted-Debian harness (`common/e2e.rs`):
//! rootfs variants with more packages (scripts/e2e/fleet-tree.sh), the
//! real istio-vm .deb built from this test run's binary, and a private LAN
//! of network namespaces for several containers and a controller.
//!
//! Use it as
//! `#[path = "common/e2e.rs"] mod e2e; #[path = "common/fleet.rs"] mod fleet;`
//! (and `#[path = "common/pinned.rs"] mod pinned;`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use crate::e2e;

/// The e2e rootfs plus `packages` (comma-separated), cached; built on first
/// use, parallel callers wait for it.
pub fn variant_tree(packages: &str) -> PathBuf {
    static CACHE: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    e2e::require_prerequisites();
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = c.get(packages) {
        return p.clone();
    }
    let out = Command::new(e2e::repo().join("scripts/e2e/fleet-tree.sh"))
        .arg(packages)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/e2e/fleet-tree.sh");
    assert!(
        out.status.success(),
        "scripts/e2e/fleet-tree.sh {packages} failed ({}); see its messages above",
        out.status
    );
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    );
    assert!(
        p.join("usr/lib/systemd/systemd").exists(),
        "scripts/e2e/fleet-tree.sh printed `{}`, which holds no systemd",
        p.display()
    );
    c.insert(packages.to_string(), p.clone());
    p
}

/// cargo-deb version scripts/build-deb.sh pins.
const CARGO_DEB: &str = "cargo-deb 3.8.0";

/// The real istio-vm .deb (Cargo.toml's `[package.metadata.deb]`: maintainer
/// scripts, conffile, docs) around the binary of this test run, built once
/// per test process with cargo-deb (`--profile dev`: the debug binary cargo
/// already built, so no release build is needed for the fleet tests).
pub fn istio_vm_deb() -> PathBuf {
    istio_vm_deb_revision(1)
}

/// [`istio_vm_deb`] with Debian revision `revision` (version
/// `<CARGO_PKG_VERSION>-<revision>`): "a newer version" for upgrade tests,
/// the same binary in a package apt orders after the lower revisions.
pub fn istio_vm_deb_revision(revision: u32) -> PathBuf {
    static DEBS: Mutex<BTreeMap<u32, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut debs = DEBS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = debs.get(&revision) {
        return p.clone();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let version = Command::new(&cargo).args(["deb", "--version"]).output();
    let ok = matches!(&version, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == CARGO_DEB);
    assert!(
        ok,
        "the fleet tests package istio-vm with {CARGO_DEB}, which is missing \
         (scripts/build-deb.sh installs it: `cargo install --locked cargo-deb --version 3.8.0`)"
    );
    // <target>/debug/istio-vm -> <target>
    let target = e2e::target_profile_dir()
        .parent()
        .expect("target directory")
        .to_path_buf();
    // One directory per process (parallel test binaries build their own).
    let proc_dir = target.join(format!("fleet-deb-{}", std::process::id()));
    if debs.is_empty() {
        let _ = std::fs::remove_dir_all(&proc_dir);
        // Left-overs of finished runs go.
        if let Ok(dir) = std::fs::read_dir(&target) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("fleet-deb-")
                    && pid.parse::<u32>().is_ok()
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let out_dir = proc_dir.join(format!("rev{revision}"));
    std::fs::create_dir_all(&out_dir).expect("creating the .deb directory");
    let out = Command::new(&cargo)
        .args([
            "deb",
            "--no-build",
            "--locked",
            "--profile",
            "dev",
            "--fast",
            "-q",
        ])
        .args(["--deb-revision", &revision.to_string()])
        .arg("--output")
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(e2e::repo())
        .output()
        .expect("running cargo deb");
    assert!(
        out.status.success(),
        "cargo deb failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(deb.is_file(), "cargo deb printed `{}`", deb.display());
    debs.insert(revision, deb.clone());
    deb
}

/// Runs a command of this machine; panics with its output unless it succeeds.
#[track_caller]
pub fn run(argv: &[&str]) -> Output {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", argv[0]));
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n{}{}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private LAN on 198.51.100.0/24: a controller namespace holding a bridge
/// (198.51.100.1) and one namespace per host, linked to the bridge by a veth
/// pair whose inner end is the host's `eth0`. Nothing in it reaches any other
/// network: the namespaces have no other links and no default route.
/// Removed on drop (the veths go with their namespaces).
pub struct Lan {
    pub controller: String,
    pub hosts: Vec<LanHost>,
}

pub struct LanHost {
    pub netns: String,
    pub addr: String,
}

pub const CONTROLLER_ADDR: &str = "198.51.100.1";

impl Lan {
    /// `count` hosts at 198.51.100.21, .22, ...; `tag` keeps names unique.
    pub fn new(tag: &str, count: usize) -> Lan {
        assert!(count < 50);
        let pid = std::process::id();
        let controller = format!("ivf-{tag}-{pid}-c");
        let mut lan = Lan {
            controller: controller.clone(),
            hosts: Vec::new(),
        };
        run(&["ip", "netns", "add", &controller]);
        let c = controller.as_str();
        run(&["ip", "-n", c, "link", "set", "lo", "up"]);
        run(&["ip", "-n", c, "link", "add", "br0", "type", "bridge"]);
        run(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            &format!("{CONTROLLER_ADDR}/24"),
            "dev",
            "br0",
        ]);
        run(&["ip", "-n", c, "link", "set", "br0", "up"]);
        for i in 0..count {
            let netns = format!("ivf-{tag}-{pid}-{i}");
            let addr = format!("198.51.100.{}", 21 + i);
            run(&["ip", "netns", "add", &netns]);
            lan.hosts.push(LanHost {
                netns: netns.clone(),
                addr: addr.clone(),
            });
            let n = netns.as_str();
            let outer = format!("vh{i}");
            run(&[
                "ip", "-n", c, "link", "add", &outer, "type", "veth", "peer", "name", "eth0",
                "netns", n,
            ]);
            run(&["ip", "-n", c, "link", "set", &outer, "master", "br0", "up"]);
            run(&["ip", "-n", n, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", n, "link", "set", "eth0", "up"]);
        }
        lan
    }

    /// The systemd-nspawn options that put a container into host `i`'s
    /// namespace. Unlike `--private-network`, `--network-namespace-path`
    /// does not keep CAP_NET_ADMIN in the container's bounding set, and
    /// without it the container's services (the capture unit) cannot read
    /// or write netfilter; it only reaches this namespace.
    pub fn nspawn_network(&self, i: usize) -> Vec<String> {
        vec![
            format!(
                "--network-namespace-path=/run/netns/{}",
                self.hosts[i].netns
            ),
            "--capability=CAP_NET_ADMIN".into(),
        ]
    }

    /// A command run in the controller's namespace.
    pub fn controller_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.controller, program]);
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.controller])
            .status();
    }
}

/// Gives the container tree its own SSH host keys (the cached variant holds
/// none) and lets `pubkey` log in as root.
pub fn enable_ssh(vm: &e2e::Vm, pubkey: &str) {
    let root = vm.root();
    run(&["chroot", root.to_str().unwrap(), "ssh-keygen", "-A", "-q"]);
    let ssh = vm.path("/root/.ssh");
    std::fs::create_dir_all(&ssh).expect("mkdir /root/.ssh");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
    let keys = ssh.join("authorized_keys");
    std::fs::write(&keys, pubkey).expect("writing authorized_keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Digests (with owner and mode) of `paths` inside the container; `absent`
/// for a missing one.
pub fn digests(vm: &e2e::Vm, paths: &[&str]) -> String {
    let script = format!(
        "for p in {}; do if [ -e \"$p\" ]; then \
         printf '%s %s %s\\n' \"$p\" \"$(stat -c '%F %U %G %a %i' \"$p\")\" \
         \"$( [ -f \"$p\" ] && sha256sum < \"$p\" | cut -c1-16)\"; \
         else echo \"$p absent\"; fi; done",
        paths.join(" ")
    );
    vm.ok(&script)
}

pub fn path_of(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// What `istio-vm install` promises on a booted host, checked inside the
/// container: the services run, the files are placed with their owners and
/// modes, the hosts block is in /etc/hosts, capture rules are in, and the
/// (stand-in) agent is ready.
pub fn assert_onboarded(vm: &e2e::Vm, hosts_block: &str) {
    use istio_vm::layout;
    use std::time::Duration;
    vm.wait_until(
        "istio-vm-capture and istio are active",
        Duration::from_secs(30),
        "systemctl is-active -q istio-vm-capture istio",
    );
    // Owners and modes as docs/DESIGN.md's table (tests/common/pinned.rs),
    // not as layout.rs has them.
    for (path, kind, owner, mode) in crate::pinned::PINNED {
        let got = vm.ok(&format!("stat -c '%U %G %a %F' {path}"));
        assert_eq!(
            got.trim(),
            crate::pinned::stat_line(*kind, owner, *mode),
            "in {}: {path}",
            vm.name
        );
    }
    let hosts = vm.ok("cat /etc/hosts");
    let want = format!(
        "{}\n{hosts_block}{}\n",
        layout::HOSTS_BEGIN,
        layout::HOSTS_END
    );
    assert!(
        hosts.contains(&want),
        "in {}: /etc/hosts:\n{hosts}",
        vm.name
    );
    let rules = vm.ok("iptables-save -t nat");
    let jumps = |chain: &str, target: &str| {
        rules
            .lines()
            .any(|l| l.starts_with(&format!("-A {chain} ")) && l.ends_with(&format!("-j {target}")))
    };
    assert!(
        jumps("OUTPUT", "ISTIO_OUTPUT") && jumps("PREROUTING", "ISTIO_INBOUND"),
        "in {}: no jumps into Istio's chains:\n{rules}",
        vm.name
    );
    for want in ["--to-ports 15001", "--to-ports 15006", "--to-ports 15053"] {
        assert!(
            rules.contains(want),
            "in {}: no `{want}` in:\n{rules}",
            vm.name
        );
    }
    vm.wait_until(
        "the agent is ready",
        Duration::from_secs(20),
        "exec 3<>/dev/tcp/127.0.0.1/15021 && \
         printf 'GET /healthz/ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '",
    );
}

/// A controller-side project directory: the shipped playbooks, role,
/// inventory and ansible.cfg copied as they are, plus a fresh SSH key pair
/// (`id_ed25519`, comment `comment`). Returns (the directory, its public key).
pub fn ansible_project(prefix: &str, comment: &str) -> (tempfile::TempDir, String) {
    let project = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("project dir");
    let p = project.path();
    run(&[
        "cp",
        "-r",
        path_of(&e2e::repo().join("packaging/ansible/.")),
        path_of(p),
    ]);
    let key = p.join("id_ed25519");
    run(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        comment,
        "-f",
        path_of(&key),
    ]);
    let pubkey = std::fs::read_to_string(p.join("id_ed25519.pub")).expect("public key");
    (project, pubkey)
}
