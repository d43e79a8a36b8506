//! Test harness for `istio-vm verify`: a VM root written per layout.rs, a
//! private network namespace per test, and the CLI run inside it with the
//! root's /etc/hosts bind-mounted over the host's (private mount namespace),
//! so getaddrinfo sees exactly what the VM would.
//!
//! Every test gets its own network namespaces, so the default ports (15012,
//! 15021, 15000, 15053, 15001) are free and tests run in parallel. A test
//! that lets verify dial istiod uses a `Wire`: the VM's namespace, where
//! Istio's capture rules are applied and verify and the stand-in agent run,
//! joined by a veth pair to istiod's own namespace (203.0.113.0/24). istiod
//! never sits on the VM's loopback, where Istio's rules treat traffic as
//! hairpin (tools/istio-iptables/pkg/capture/run.go). `in_netns` (loopback
//! only) is for tests that never dial istiod.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fake_istiod;

/// uid/gid the root's /etc/passwd gives istio-proxy; placed files are
/// chowned to it for real (tests run as root).
pub const PROXY_UID: u32 = 4242;

/// Runs `f` on a thread inside a fresh network namespace with `lo` up.
pub fn in_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let h = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): these tests need root");
        let st = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running ip (iproute2)");
        assert!(st.success(), "ip link set lo up failed");
        f()
    });
    match h.join() {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// A multi-thread runtime whose workers live in the caller's namespace.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What goes into the VM root.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub namespace: String,
    pub service_account: String,
    /// Token subject; defaults to the namespace/service account above.
    pub token_sub: Option<String>,
    pub token_aud: Vec<String>,
    /// Token expiry relative to now, in seconds (negative: expired).
    pub token_exp_in: i64,
    pub discovery_address: String,
    /// Lines of the istio-vm block in /etc/hosts.
    pub hosts_block: Vec<String>,
    /// Extra /etc/hosts lines outside the block.
    pub hosts_extra: Vec<String>,
    /// Extra cluster.env lines (`KEY='value'`).
    pub env_extra: Vec<String>,
    pub dns_capture: bool,
    /// istio-sidecar's version in the root's dpkg database (None: not installed).
    pub sidecar_version: Option<String>,
    /// The token's issuer (default: the fake's default cluster's).
    pub token_iss: String,
    /// The token's `nbf`/`iat` relative to now, in seconds.
    pub token_issued_in: i64,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            namespace: "vm-apps".into(),
            service_account: "ratings-sa".into(),
            token_sub: None,
            token_aud: vec!["istio-ca".into()],
            token_exp_in: 3600,
            discovery_address: "istiod.istio-system.svc:15012".into(),
            hosts_block: vec!["127.0.0.1 istiod.istio-system.svc".into()],
            hosts_extra: Vec::new(),
            env_extra: Vec::new(),
            dns_capture: true,
            sidecar_version: None,
            token_iss: fake_istiod::ISSUER.into(),
            token_issued_in: -60,
        }
    }
}

pub struct VmRoot {
    pub dir: tempfile::TempDir,
}

fn write(root: &Path, path: &str, body: &[u8], mode: u32) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path) {
    std::os::unix::fs::chown(p, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
}

impl VmRoot {
    /// Writes the placed files as `istio-vm install` would (layout.rs),
    /// with `root_pem` as the mesh root.
    pub fn new(spec: &VmSpec, root_pem: &str) -> VmRoot {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A Debian-like tree: /var/run is a symlink to /run.
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        write(
            root,
            "/etc/passwd",
            format!("root:x:0:0:root:/root:/bin/sh\nistio-proxy:x:{PROXY_UID}:{PROXY_UID}::/var/lib/istio:/usr/sbin/nologin\n").as_bytes(),
            0o644,
        );
        for d in [
            "etc/certs",
            "var/lib/istio",
            "var/lib/istio/envoy",
            "etc/istio/proxy",
            "etc/istio/config",
            "run/secrets",
            "run/secrets/tokens",
            "var/log/istio",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            chown(&root.join(d));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let sub = spec.token_sub.clone().unwrap_or_else(|| {
            format!(
                "system:serviceaccount:{}:{}",
                spec.namespace, spec.service_account
            )
        });
        let aud: Vec<&str> = spec.token_aud.iter().map(String::as_str).collect();
        let tok = fake_istiod::token_with(
            &sub,
            &aud,
            now + spec.token_exp_in,
            &spec.token_iss,
            now + spec.token_issued_in,
        );
        let mut env = vec![
            "CANONICAL_REVISION='v1'".to_string(),
            "CANONICAL_SERVICE='ratings'".into(),
            "ISTIO_INBOUND_PORTS='9080'".into(),
            "ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'".into(),
            r#"ISTIO_METAJSON_LABELS='{"app":"ratings","version":"v1"}'"#.into(),
            "ISTIO_META_AUTO_REGISTER_GROUP='ratings-vm'".into(),
            "ISTIO_META_CLUSTER_ID='cluster1'".into(),
            "ISTIO_META_MESH_ID='mesh1'".into(),
            "ISTIO_META_NETWORK='vm-network'".into(),
            "ISTIO_META_WORKLOAD_NAME='ratings-vm'".into(),
            format!("ISTIO_NAMESPACE='{}'", spec.namespace),
            "ISTIO_SERVICE='ratings-vm.vm-apps'".into(),
            "ISTIO_SERVICE_CIDR='*'".into(),
            "ISTIO_SVC_IP='198.51.100.10'".into(),
            format!("POD_NAMESPACE='{}'", spec.namespace),
            format!("SERVICE_ACCOUNT='{}'", spec.service_account),
            "TRUST_DOMAIN='cluster.local'".into(),
        ];
        if spec.dns_capture {
            env.push("ISTIO_META_DNS_CAPTURE='true'".into());
        }
        env.extend(spec.env_extra.iter().cloned());
        env.sort();
        let mesh = format!(
            "defaultConfig:\n  discoveryAddress: {}\n  meshId: mesh1\n  proxyMetadata:\n    POD_NAMESPACE: {}\n",
            spec.discovery_address, spec.namespace
        );
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for l in &spec.hosts_extra {
            hosts.push_str(l);
            hosts.push('\n');
        }
        hosts.push_str("# BEGIN istio-vm\n");
        for l in &spec.hosts_block {
            hosts.push_str(l);
            hosts.push('\n');
        }
        hosts.push_str("# END istio-vm\n");
        let placed: [(&str, Vec<u8>, u32); 5] = [
            (
                "/etc/certs/root-cert.pem",
                root_pem.as_bytes().to_vec(),
                0o644,
            ),
            (
                "/run/secrets/tokens/istio-token",
                tok.clone().into_bytes(),
                0o600,
            ),
            ("/var/lib/istio-vm/istio-token", tok.into_bytes(), 0o600),
            (
                "/var/lib/istio/envoy/cluster.env",
                (env.join("\n") + "\n").into_bytes(),
                0o644,
            ),
            ("/etc/istio/config/mesh", mesh.into_bytes(), 0o644),
        ];
        for (p, body, mode) in placed {
            write(root, p, &body, mode);
            chown(&root.join(p.trim_start_matches('/')));
        }
        write(root, "/etc/hosts", hosts.as_bytes(), 0o644);
        // dpkg's status file, as `dpkg -i istio-sidecar.deb` leaves it.
        let mut status = String::from(
            "Package: base-files\nStatus: install ok installed\nPriority: required\nVersion: 12.4+deb12u5\n",
        );
        if let Some(v) = &spec.sidecar_version {
            status.push_str(&format!(
                "\nPackage: istio-sidecar\nStatus: install ok installed\nPriority: extra\nSection: devel\n\
                 Installed-Size: 90000\nMaintainer: istio@istio.io\nArchitecture: amd64\nVersion: {v}\n\
                 Description: Istio Sidecar\n"
            ));
        }
        write(root, "/var/lib/dpkg/status", status.as_bytes(), 0o644);
        // The resolver inside the namespace: nothing listens there, so a
        // name that is not in /etc/hosts fails at once and stays local.
        write(root, "/etc/resolv.conf", b"nameserver 127.0.0.1\n", 0o644);
        VmRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, vm_path: &str) -> PathBuf {
        self.dir.path().join(vm_path.trim_start_matches('/'))
    }

    /// cluster.env as placed, as a map.
    pub fn env(&self) -> std::collections::BTreeMap<String, String> {
        let b = std::fs::read(self.file("/var/lib/istio/envoy/cluster.env")).unwrap();
        istio_vm::bundle::ClusterEnv::parse(&b).unwrap().to_map()
    }

    pub fn append_log(&self, vm_path: &str, lines: &[&str]) {
        use std::io::Write;
        let p = self.file(vm_path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }
}

/// The result of one `istio-vm verify` run.
pub struct Run {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn check(&self, id: &str) -> &serde_json::Value {
        self.json["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no check {id} in {}", self.json))
    }

    pub fn status(&self, id: &str) -> &str {
        self.check(id)["status"].as_str().unwrap_or_default()
    }

    pub fn hint(&self, id: &str) -> &str {
        self.check(id)["hint"].as_str().unwrap_or_default()
    }

    pub fn detail(&self, id: &str) -> &str {
        self.check(id)["detail"].as_str().unwrap_or_default()
    }

    /// Asserts `id` has `status` and its hint contains `needle`.
    pub fn expect(&self, id: &str, status: &str, needle: &str) {
        assert_eq!(self.status(id), status, "{id}: {}", self.check(id));
        if !needle.is_empty() {
            let c = self.check(id);
            let text = format!("{} {}", c["detail"], c["hint"]);
            assert!(text.contains(needle), "{id} should mention `{needle}`: {c}");
        }
    }

    pub fn failing(&self) -> Vec<String> {
        self.json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "fail")
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// `istio-vm --root ROOT --output json verify ARGS...`, run from the calling
/// thread (so in its network namespace) inside a private mount namespace
/// where the root's /etc/hosts and resolv.conf are the host's.
pub fn verify(root: &VmRoot, args: &[&str]) -> Run {
    verify_with(root, env!("CARGO_BIN_EXE_istio-vm").as_ref(), &[], args)
}

/// As `verify`, with `envs` set for it (e.g. SSL_CERT_FILE).
pub fn verify_env(root: &VmRoot, envs: &[(&str, &str)], args: &[&str]) -> Run {
    run_verify(
        root,
        env!("CARGO_BIN_EXE_istio-vm").as_ref(),
        &[],
        envs,
        args,
    )
}

/// As `verify`, with another binary and a command put in front of it
/// (e.g. `/usr/bin/time -v`).
pub fn verify_with(root: &VmRoot, bin: &Path, wrapper: &[&str], args: &[&str]) -> Run {
    run_verify(root, bin, wrapper, &[], args)
}

fn run_verify(
    root: &VmRoot,
    bin: &Path,
    wrapper: &[&str],
    envs: &[(&str, &str)],
    args: &[&str],
) -> Run {
    // Only files and DNS answer host lookups: no nscd, systemd-resolved or
    // machined socket (reachable from any network namespace) gets asked.
    let nss = root.dir.path().join(".verify-nsswitch.conf");
    std::fs::write(
        &nss,
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    )
    .unwrap();
    let script = r#"set -e
mount --bind "$1" /etc/hosts
if [ -e /etc/resolv.conf ]; then mount --bind "$2" /etc/resolv.conf; fi
if [ -e /etc/nsswitch.conf ]; then mount --bind "$3" /etc/nsswitch.conf; fi
if [ -d /run/nscd ]; then mount -t tmpfs tmpfs /run/nscd; fi
shift 3
exec "$@""#;
    let start = Instant::now();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(root.file("/etc/hosts"))
        .arg(root.file("/etc/resolv.conf"))
        .arg(&nss)
        .args(wrapper)
        .arg(bin)
        .arg("--root")
        .arg(root.path())
        .args(["--output", "json", "verify"])
        .args(args)
        .env_remove("ISTIO_VM_TIMEOUT")
        .env_remove("ISTIO_VM_CONFIG")
        .env_remove("ISTIO_VM_OUTPUT")
        .env_remove("ISTIO_VM_ROOT")
        // The https probe's extra roots come from the test, not the caller.
        .env_remove("SSL_CERT_FILE")
        .envs(envs.iter().copied())
        .output()
        .expect("running unshare (util-linux)");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): stdout={stdout} stderr={}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

/// Kills the child (by its pid) when dropped, also on a failed assertion.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Path of the stand-in agent example, building it if this test run did not.
pub fn stand_in_agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/stand-in-agent
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples/stand-in-agent");
    // A run filtered with `--test NAME` does not rebuild examples, and a stale
    // stand-in lacks the flags newer tests pass: rebuild when its source is
    // newer. `--all-features` matches how the suite builds, so the library's
    // artefacts are not rebuilt with other features.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/stand-in-agent/main.rs");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match (modified(&bin), modified(&src)) {
        (Some(b), Some(s)) => b < s,
        _ => true,
    };
    if stale {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--all-features", "--example", "stand-in-agent"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("cargo build --example stand-in-agent");
        assert!(st.success());
    }
    bin
}

/// Starts the stand-in agent in the caller's namespace and waits (bounded)
/// until its health port answers.
pub fn start_agent(root: &VmRoot, extra: &[&str]) -> ChildGuard {
    let child = Command::new(stand_in_agent())
        .arg("--root")
        .arg(root.path())
        .args(["--health-addr", "127.0.0.1:15021"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting stand-in-agent");
    let guard = ChildGuard(child);
    wait_port("127.0.0.1:15021");
    wait_port("127.0.0.1:15000");
    guard
}

/// Polls until something accepts on `addr` (deadline 10 s).
pub fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- two hosts on a wire

/// The VM's and istiod's addresses on the wire between them.
pub const VM_IP: &str = "203.0.113.10";
pub const ISTIOD_IP: &str = "203.0.113.20";

/// Two named network namespaces joined by a veth pair: the VM
/// (203.0.113.10) and istiod (203.0.113.20), so istiod is a remote machine
/// to the VM's capture rules, not hairpin traffic on its loopback.
pub struct Wire {
    pub vm: String,
    pub istiod: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Wire {
    pub fn new() -> Wire {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let w = Wire {
            vm: format!("ivm-vm-{tag}"),
            istiod: format!("ivm-istiod-{tag}"),
        };
        ip(&["netns", "add", &w.vm]);
        ip(&["netns", "add", &w.istiod]);
        ip(&[
            "-n", &w.vm, "link", "add", "vm0", "type", "veth", "peer", "name", "istiod0", "netns",
            &w.istiod,
        ]);
        for (ns, dev, addr) in [(&w.vm, "vm0", VM_IP), (&w.istiod, "istiod0", ISTIOD_IP)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        w
    }

    /// Runs `f` on a thread inside namespace `ns` (threads and processes it
    /// starts stay there).
    pub fn run_in<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{ns}");
        let h = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("named netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        });
        match h.join() {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e),
        }
    }

    /// A runtime whose workers live in istiod's namespace.
    pub fn istiod_runtime(&self) -> tokio::runtime::Runtime {
        Self::run_in(&self.istiod, runtime)
    }

    /// A fake istiod on istiod's address and `port`, bound on a worker of
    /// `rt` (from `istiod_runtime`, so in istiod's namespace).
    pub fn start_istiod(
        rt: &tokio::runtime::Runtime,
        port: u16,
        b: fake_istiod::Behaviour,
        ca: std::sync::Arc<fake_istiod::TestCa>,
    ) -> fake_istiod::FakeIstiod {
        let bind = std::net::SocketAddr::new(ISTIOD_IP.parse().unwrap(), port);
        rt.block_on(async move {
            tokio::spawn(fake_istiod::FakeIstiod::start_with_ca(bind, b, ca))
                .await
                .unwrap()
        })
    }

    /// Runs `f` on a thread in the VM's namespace, behind Istio's capture
    /// rules for `root` (applied first, once per namespace).
    pub fn on_vm<R: Send + 'static>(
        &self,
        root: VmRoot,
        f: impl FnOnce(&VmRoot) -> R + Send + 'static,
    ) -> R {
        Self::run_in(&self.vm, move || {
            apply_capture(&root);
            f(&root)
        })
    }
}

/// A fake istiod with `b` in its own namespace, the VM root for `spec` (on
/// the wire) with the fake's root certificate, and `f` run in the VM's
/// namespace behind Istio's capture rules; then what the fake saw.
pub fn with_istiod<R: Send + 'static>(
    spec: VmSpec,
    b: fake_istiod::Behaviour,
    f: impl FnOnce(&VmRoot) -> R + Send + 'static,
) -> (R, fake_istiod::Seen) {
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let fake = Wire::start_istiod(&rt, 15012, b, ca);
    let root = VmRoot::new(&spec.on_wire(), fake.root_pem());
    let r = wire.on_vm(root, f);
    let seen = fake.seen();
    drop(fake);
    drop(rt);
    (r, seen)
}

/// For checks that read only files: the VM on a wire with nothing in
/// istiod's namespace, so verify's network checks end at once (connection
/// refused at istiod's address) and no fake istiod is started. `f` runs in
/// the VM's namespace behind Istio's capture rules.
pub fn files_only<R: Send + 'static>(
    spec: VmSpec,
    f: impl FnOnce(&VmRoot) -> R + Send + 'static,
) -> R {
    let wire = Wire::new();
    let root = VmRoot::new(
        &spec.on_wire(),
        &fake_istiod::TestCa::new("cluster.local").cert_pem,
    );
    wire.on_vm(root, f)
}

/// Applies the capture rules `istio-vm install` recorded under `root`
/// (`/var/lib/istio-vm/capture/`) in the calling thread's namespace, as
/// `istio-vm capture apply` would on the VM (it refuses `--root`).
pub fn apply_record(root: &VmRoot) {
    use std::io::Write;
    let dir = root.file("/var/lib/istio-vm/capture");
    let mut applied = 0;
    for (file, cmd, args) in [
        ("rules-v4", "iptables-restore", &["--noflush"][..]),
        ("rules-v6", "ip6tables-restore", &["--noflush"][..]),
        ("rules.nft", "nft", &["-f", "-"][..]),
    ] {
        let Ok(text) = std::fs::read(dir.join(file)) else {
            continue;
        };
        let mut child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        child.stdin.take().unwrap().write_all(&text).unwrap();
        assert!(child.wait().unwrap().success(), "{cmd} < {file} failed");
        applied += 1;
    }
    assert!(applied > 0, "no capture record under {}", dir.display());
}

impl VmSpec {
    /// The spec with `127.0.0.1` in its hosts lines and discovery address
    /// standing for istiod's address on the wire.
    pub fn on_wire(mut self) -> VmSpec {
        let to_istiod = |l: &String| l.replace("127.0.0.1", ISTIOD_IP);
        self.hosts_block = self.hosts_block.iter().map(to_istiod).collect();
        self.discovery_address = to_istiod(&self.discovery_address);
        self
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        for ns in [&self.vm, &self.istiod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Istio's capture rules for `root` (its cluster.env, uid/gid
/// `PROXY_UID`), as istio-vm renders them, applied with
/// `iptables-restore --noflush` in the calling thread's namespace (once:
/// a namespace that has them keeps them).
pub fn apply_capture(root: &VmRoot) {
    use std::io::Write;
    let present = Command::new("iptables")
        .args(["-t", "nat", "-S", "ISTIO_OUTPUT"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("iptables")
        .success();
    if present {
        return;
    }
    let env = root.env();
    // The root's resolv.conf: its nameservers get the DNS redirect rules.
    let resolv = std::fs::read_to_string(root.file("/etc/resolv.conf")).unwrap_or_default();
    let inp = istio_vm::capture::Inputs {
        env: &env,
        resolv_conf: &resolv,
        uid: Some(PROXY_UID),
        gid: Some(PROXY_UID),
        host_ipv6: false,
        exclude_inbound_ports: &[],
        allow_ssh_capture: false,
        // Istio's own rules: no istio-vm exclusions.
        exclude_outbound_cidrs: &[],
    };
    let (_, rendered) = istio_vm::capture::render(&inp, istio_vm::capture::Backend::Iptables)
        .expect("rendering Istio's rules");
    let istio_vm::capture::Rendered::Iptables { v4, .. } = rendered else {
        panic!("iptables rendering expected")
    };
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .expect("running iptables-restore");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(v4.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "iptables-restore failed:\n{v4}"
    );
}

/// Packets the nat table's owner-match RETURN rules let through (uid or gid
/// `PROXY_UID`), from `iptables -t nat -L -v -x`.
pub fn owner_return_packets() -> u64 {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-L", "ISTIO_OUTPUT", "-v", "-x", "-n"])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains("RETURN") && l.contains(&format!("owner UID match {PROXY_UID}"))
                || l.contains("RETURN") && l.contains(&format!("owner GID match {PROXY_UID}"))
        })
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
