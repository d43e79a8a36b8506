//! A booted Debian for the end-to-end tests: a cached debootstrap rootfs
//! (`scripts/e2e/debian-tree.sh`), copied per test, booted with systemd-nspawn on a
//! private network, driven with `nsenter -t <its systemd> -a`, and stopped
//! cleanly — also when a test fails (Drop).
//!
//! Use it as `#[path = "common/e2e.rs"] mod e2e;` so it does not depend on
//! the shared `tests/common/mod.rs`.
//!
//! If this machine cannot boot containers, [`Vm::new`] panics with what is
//! missing: the e2e tests fail, they never pass silently.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The repository (scripts/e2e lives there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo output directory of this build (where `istio-vm` and the
/// examples are).
pub fn target_profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_istio-vm"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// Fails the test with `what is missing` unless we can boot containers.
pub fn require_prerequisites() {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (run the suite as scripts/test.sh does, as root)".to_string());
    }
    for (tool, pkg) in [
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("debootstrap", "debootstrap"),
        ("dbus-daemon", "dbus"),
        ("dpkg-deb", "dpkg"),
    ] {
        if which(tool).is_none() {
            missing.push(format!("`{tool}` (apt-get install -y {pkg})"));
        }
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        missing.push("a mounted cgroup file system at /sys/fs/cgroup".into());
    }
    assert!(
        missing.is_empty(),
        "this machine cannot boot the e2e Debian container; missing: {}.\n\
         scripts/install-test-deps.sh installs the packages.",
        missing.join(", ")
    );
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The Debian releases the booted tests run on: (suite, systemd version).
pub const SUITES: &[(&str, u32)] = &[("bullseye", 247), ("bookworm", 252), ("trixie", 257)];

/// The default suite: `$ISTIO_VM_E2E_SUITE`, else bookworm (this machine's).
pub fn default_suite() -> String {
    std::env::var("ISTIO_VM_E2E_SUITE").unwrap_or_else(|_| "bookworm".into())
}

/// The cached rootfs of the default suite.
pub fn cached_rootfs() -> PathBuf {
    cached_rootfs_of(&default_suite())
}

/// The cached rootfs of `suite` (built on first use; parallel callers wait
/// for it).
pub fn cached_rootfs_of(suite: &str) -> PathBuf {
    static CACHE: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = c.iter().find(|(s, _)| s == suite) {
        return p.clone();
    }
    let out = Command::new(repo().join("scripts/e2e/debian-tree.sh"))
        .arg(suite)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/e2e/debian-tree.sh");
    assert!(
        out.status.success(),
        "scripts/e2e/debian-tree.sh failed ({}); see its messages above",
        out.status
    );
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or(""),
    );
    assert!(
        p.join("usr/lib/systemd/systemd").exists(),
        "scripts/e2e/debian-tree.sh printed `{}`, which holds no systemd",
        p.display()
    );
    c.push((suite.to_string(), p.clone()));
    p
}

/// The host's system bus, which systemd-nspawn needs. Started here if none
/// runs, and stopped again when the last container of this process is gone.
struct Bus;

struct BusState {
    users: usize,
    started: Option<Child>,
}

static BUS: Mutex<BusState> = Mutex::new(BusState {
    users: 0,
    started: None,
});

const BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

impl Bus {
    fn acquire() -> Bus {
        let mut s = BUS.lock().unwrap_or_else(|e| e.into_inner());
        if s.started.is_none() && std::os::unix::net::UnixStream::connect(BUS_SOCKET).is_err() {
            // Nobody answers: left-overs of a dead bus would stop a new one.
            let _ = fs::remove_file(BUS_SOCKET);
            let _ = fs::remove_file("/run/dbus/pid");
            fs::create_dir_all("/run/dbus").expect("creating /run/dbus");
            // Our child (not --fork), so that we reap it when done.
            let mut child = Command::new("dbus-daemon")
                .args(["--system", "--nofork", "--nopidfile"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start dbus-daemon --system: {e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(BUS_SOCKET).is_err() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("dbus-daemon --system exited ({st}); systemd-nspawn needs a system bus");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the system bus never came up at {BUS_SOCKET}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            s.started = Some(child);
        }
        s.users += 1;
        Bus
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let mut s = BUS.lock().unwrap_or_else(|e| e.into_inner());
        s.users -= 1;
        if s.users == 0
            && let Some(mut child) = s.started.take()
        {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
            let _ = fs::remove_file(BUS_SOCKET);
        }
    }
}

/// A running container: the systemd-nspawn process and the container's init.
struct Running {
    nspawn: Child,
    init: i32,
}

/// A Debian tree of its own, booted and stopped as often as a test likes.
pub struct Vm {
    pub name: String,
    work: tempfile::TempDir,
    running: Option<Running>,
    boots: u32,
    network: Vec<String>,
    _bus: Bus,
}

/// Where the per-test copies go: on disk, not on a tmpfs /tmp.
const WORK_PARENT: &str = "/var/tmp";

impl Vm {
    /// A fresh copy of the cached rootfs; `tag` names the machine (a-z0-9-).
    pub fn new(tag: &str) -> Vm {
        require_prerequisites();
        Vm::from_tree(tag, &cached_rootfs())
    }

    /// A fresh copy of the cached rootfs of `suite` (bullseye, bookworm,
    /// trixie).
    pub fn of_suite(tag: &str, suite: &str) -> Vm {
        require_prerequisites();
        Vm::from_tree(tag, &cached_rootfs_of(suite))
    }

    /// A fresh copy of another cached tree (e.g. a variant with more
    /// packages, scripts/e2e/fleet-tree.sh).
    pub fn from_tree(tag: &str, cached: &Path) -> Vm {
        require_prerequisites();
        let work = tempfile::Builder::new()
            .prefix(&format!("istio-vm-e2e-{tag}-"))
            .tempdir_in(WORK_PARENT)
            .expect("creating the work directory");
        let root = work.path().join("rootfs");
        let started = Instant::now();
        let st = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(cached)
            .arg(&root)
            .status()
            .expect("running cp");
        assert!(st.success(), "copying {} failed", cached.display());
        // Unique among the tests of all processes running at once.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ivm-{tag}-{}-{seq}", std::process::id());
        eprintln!("{name}: rootfs copied in {:.1?}", started.elapsed());
        assert!(name.len() <= 60, "machine name {name} too long");
        Vm {
            name,
            work,
            running: None,
            boots: 0,
            network: vec!["--private-network".into()],
            _bus: Bus::acquire(),
        }
    }

    /// The systemd-nspawn network options of the next boots (default
    /// `--private-network`), e.g. `--network-namespace-path=/run/netns/NS`
    /// for a namespace the test created. Never none: without one the
    /// container's netfilter would be the host's.
    pub fn set_network(&mut self, args: &[&str]) {
        assert!(!args.is_empty(), "a container always gets a network option");
        self.network = args.iter().map(|a| a.to_string()).collect();
    }

    /// The container's root directory on this machine.
    pub fn root(&self) -> PathBuf {
        self.work.path().join("rootfs")
    }

    /// A path inside the container, as seen from this machine.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root().join(abs.trim_start_matches('/'))
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    fn console_log(&self) -> PathBuf {
        self.work.path().join(format!("console-{}.log", self.boots))
    }

    /// Boots the tree and waits until systemd says the boot is finished;
    /// panics (with the console and failed units) if it is not `running`.
    pub fn boot(&mut self) {
        assert!(self.running.is_none(), "{} is already booted", self.name);
        self.boots += 1;
        let started = Instant::now();
        let log = fs::File::create(self.console_log()).expect("creating console log");
        // Each container gets cgroups of its own before nspawn starts: with
        // `--keep-unit` and no host systemd, every container would otherwise
        // run in the same (root) cgroup, and their systemds would create and
        // remove each other's `system.slice/istio.service`, failing units
        // with 219/CGROUP when tests boot containers in parallel.
        let nspawn = Command::new("sh")
            .args([
                "-c",
                "name=$1; shift
                 for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
                     [ -e $h/cgroup.procs ] || continue
                     case $(stat -fc %T $h) in tmpfs) continue ;; esac
                     mkdir -p $h/istio-vm-e2e/$name && echo $$ > $h/istio-vm-e2e/$name/cgroup.procs
                 done
                 exec systemd-nspawn \"$@\"",
                "sh",
                &self.name,
            ])
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--resolv-conf=off",
                "--timezone=off",
                "--console=passive",
                "-q",
                "-D",
            ])
            .arg(self.root())
            .arg(format!("--machine={}", self.name))
            // Always one: without it the container's netfilter is the host's.
            .args(&self.network)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run systemd-nspawn: {e}"));
        let nspawn_pid = nspawn.id() as i32;
        self.running = Some(Running { nspawn, init: 0 });
        let deadline = Instant::now() + Duration::from_secs(30);
        let init = loop {
            if let Some(pid) = child_named(nspawn_pid, "systemd") {
                break pid;
            }
            if let Some(st) = self
                .running
                .as_mut()
                .unwrap()
                .nspawn
                .try_wait()
                .ok()
                .flatten()
            {
                self.running = None;
                panic!(
                    "systemd-nspawn exited ({st}) before the container's systemd started:\n{}",
                    tail(&self.console_log(), 40)
                );
            }
            if Instant::now() > deadline {
                let console = tail(&self.console_log(), 40);
                self.shutdown();
                panic!("the container's systemd did not appear within 30 s:\n{console}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.running.as_mut().unwrap().init = init;
        let state = self.wait_boot_finished(Duration::from_secs(90));
        eprintln!(
            "{}: boot {} reached `{state}` in {:.1?}",
            self.name,
            self.boots,
            started.elapsed()
        );
        if state != "running" {
            let failed = self.sh("systemctl --failed --no-legend --no-pager; journalctl -b -p warning --no-pager | tail -n 40");
            panic!(
                "{} booted to `{state}`, not `running`:\n{}{}",
                self.name,
                String::from_utf8_lossy(&failed.stdout),
                String::from_utf8_lossy(&failed.stderr)
            );
        }
    }

    /// `systemctl is-system-running --wait`, retried until systemd answers.
    fn wait_boot_finished(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.run(&["timeout", "30", "systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if matches!(state.as_str(), "running" | "degraded" | "maintenance") {
                return state;
            }
            if Instant::now() > deadline {
                return format!("{state} (still not up after {limit:?})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container's init, as a pid of this machine.
    pub fn init_pid(&self) -> i32 {
        self.running.as_ref().expect("not booted").init
    }

    /// Runs `argv` inside the container (all its namespaces).
    pub fn run(&self, argv: &[&str]) -> Output {
        let init = self.init_pid();
        Command::new("nsenter")
            .args(["-t", &init.to_string(), "-a", "--"])
            .args([
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "HOME=/root",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// Runs a bash script inside the container.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["bash", "-c", script])
    }

    /// Runs a bash script inside the container; panics unless it succeeds;
    /// returns its stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.status.success() {
            // A failed systemctl says why only in the journal.
            let journal = if script.contains("systemctl") {
                let j = self.sh("journalctl -b --no-pager -n 80 -u istio -u istio-vm-capture");
                String::from_utf8_lossy(&j.stdout).into_owned()
            } else {
                String::new()
            };
            panic!(
                "in {}: `{script}` failed ({}):\nstdout:\n{}\nstderr:\n{}\n{journal}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `script` until it succeeds or `limit` passes; returns its stdout.
    #[track_caller]
    pub fn wait_until(&self, what: &str, limit: Duration, script: &str) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.sh(script);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                let diag =
                    self.sh("systemctl status --no-pager istio istio-vm-capture 2>&1 | tail -n 40");
                panic!(
                    "in {}: {what}: not so after {limit:?} (`{script}`: {}; {}{})\n{}",
                    self.name,
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&diag.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the container's one process named `comm`; panics if none.
    #[track_caller]
    pub fn kill_process(&self, comm: &str) {
        self.ok(&format!(
            "pid=; for d in /proc/[0-9]*; do [ \"$(cat $d/comm 2>/dev/null)\" = {comm} ] && \
             pid=${{d#/proc/}}; done; [ -n \"$pid\" ] && kill -KILL $pid"
        ));
    }

    /// Clean stop: `systemctl poweroff`, a bounded wait, then kill by pid.
    pub fn shutdown(&mut self) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        let started = Instant::now();
        if r.init > 0 {
            let _ = Command::new("nsenter")
                .args([
                    "-t",
                    &r.init.to_string(),
                    "-a",
                    "--",
                    "systemctl",
                    "poweroff",
                    "--no-block",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let exited = loop {
            match r.nspawn.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break false,
            }
        };
        if !exited {
            eprintln!("{}: no clean poweroff within 30 s, killing it", self.name);
            let _ = r.nspawn.kill();
            if r.init > 0 {
                let _ = kill(Pid::from_raw(r.init), Signal::SIGKILL);
            }
            let _ = r.nspawn.wait();
        }
        let _ = fs::remove_file(format!("/run/systemd/nspawn/propagate/{}", self.name));
        // The container's own cgroups (see `boot`), empty once it is gone.
        let _ = Command::new("sh")
            .args([
                "-c",
                "for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
                     [ -d $h/istio-vm-e2e/$1 ] && find $h/istio-vm-e2e/$1 -depth -type d -exec rmdir {} +
                 done; true",
                "sh",
                &self.name,
            ])
            .stderr(Stdio::null())
            .status();
        eprintln!("{}: stopped in {:.1?}", self.name, started.elapsed());
    }

    /// Stops the container and boots the same tree again.
    pub fn reboot(&mut self) {
        self.shutdown();
        self.boot();
    }

    /// The last lines of the current console log (for failure messages).
    pub fn console_tail(&self, n: usize) -> String {
        tail(&self.console_log(), n)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A direct child of `parent` whose command name is `comm`.
fn child_named(parent: i32, comm: &str) -> Option<i32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if name == comm && ppid == Some(&parent.to_string()) {
            return Some(pid);
        }
    }
    None
}

fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Builds the stand-in `istio-sidecar` .deb (scripts/e2e/build-stand-in-deb.sh)
/// into `dir` and returns its path.
pub fn stand_in_deb(dir: &Path) -> PathBuf {
    let agent = target_profile_dir().join("examples/stand-in-agent");
    assert!(
        agent.exists(),
        "{} is missing: `cargo test` builds the examples; with a test filter run \
         `cargo build --example stand-in-agent` first",
        agent.display()
    );
    stand_in_deb_with(&agent, dir)
}

/// The stand-in `istio-sidecar` .deb around a given agent binary (e.g. one
/// built for an older glibc).
pub fn stand_in_deb_with(agent: &Path, dir: &Path) -> PathBuf {
    let deb = dir.join("istio-sidecar-stand-in.deb");
    let out = Command::new(repo().join("scripts/e2e/build-stand-in-deb.sh"))
        .arg(agent)
        .arg(&deb)
        .output()
        .expect("running build-stand-in-deb.sh");
    assert!(
        out.status.success(),
        "build-stand-in-deb.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

/// Copies a file of this machine into the container's tree. `dest` must not
/// pass through an absolute symlink of the tree (`/var/run`): followed from
/// here, it would lead out of the tree into this machine's own.
pub fn put(vm: &Vm, src: &Path, dest: &str, mode: u32) {
    let to = vm.path(dest);
    fs::create_dir_all(to.parent().unwrap()).expect("mkdir in rootfs");
    let parent = fs::canonicalize(to.parent().unwrap()).expect("canonical parent");
    assert!(
        parent.starts_with(fs::canonicalize(vm.root()).unwrap()),
        "{dest} leads out of the container's tree (to {})",
        parent.display()
    );
    fs::copy(src, &to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), to.display()));
    fs::set_permissions(&to, fs::Permissions::from_mode(mode)).expect("chmod in rootfs");
}
