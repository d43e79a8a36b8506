//! Hostile trees (issue #16): FIFOs and devices where the tool reads a file,
//! links out of the root, an in-root parent link, a read-only root, a file
//! given as `--root`, leftovers of the lock, a reinstall with less to place.
//! Each case ends in a clean error or a converged tree, in seconds and at
//! bounded memory. These need root (mknod, mount); CI runs them as root.

mod common;
#[path = "common/apply.rs"]
mod fx;

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fx::{debian_root, install, ok, tree, tree_diff};

fn example() -> &'static Path {
    common::example_bundle()
}

fn require_root() {
    common::require_root("mknod, mount");
}

/// What a bounded run gave: exit code, output, peak RSS of the process.
struct Bounded {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss_kib: i64,
}

/// Run `istio-vm ARGS` (in a network namespace of its own, so nothing it
/// tries can leave the machine) and wait for it with a hang guard: a run
/// still alive after `guard` is killed and the test fails. Peak RSS comes
/// from wait4(2)'s rusage of that very child.
// Reaped by wait4 below (which also gives the child's rusage).
#[allow(clippy::zombie_processes)]
fn bounded(args: &[&str], guard: Duration) -> Bounded {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let child = Command::new("unshare")
        .arg("-n")
        .arg(env!("CARGO_BIN_EXE_istio-vm"))
        .args(args)
        .env_remove("ISTIO_VM_ROOT")
        .env_remove("ISTIO_VM_CONFIG")
        .env_remove("ISTIO_VM_OUTPUT")
        .env_remove("ISTIO_VM_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .expect("unshare (util-linux)");
    let pid = child.id() as i32;
    let deadline = Instant::now() + guard;
    let mut status = 0;
    let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: plain wait4 on our own child with valid out-pointers.
        let r = unsafe { nix::libc::wait4(pid, &mut status, nix::libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("istio-vm {args:?} still running after {guard:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Bounded {
        code: nix::libc::WIFEXITED(status).then(|| nix::libc::WEXITSTATUS(status)),
        stdout: std::fs::read_to_string(o).unwrap(),
        stderr: std::fs::read_to_string(e).unwrap(),
        max_rss_kib: ru.ru_maxrss,
    }
}

const GUARD: Duration = Duration::from_secs(60);
const RSS_LIMIT_KIB: i64 = 64 * 1024;

fn fifo(p: &Path) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    let _ = std::fs::remove_file(p);
    nix::unistd::mkfifo(
        p,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
}

fn dev_zero(root: &Path) {
    std::fs::create_dir_all(root.join("dev")).unwrap();
    nix::sys::stat::mknod(
        &root.join("dev/zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
}

fn install_args(r: &Path) -> Vec<String> {
    vec![
        "--root".into(),
        r.to_str().unwrap().into(),
        "--output".into(),
        "json".into(),
        "install".into(),
        "--bundle".into(),
        example().to_str().unwrap().into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_fifo_at_a_file_install_reads_is_a_clean_error() {
    require_root();
    for rel in [
        "etc/passwd",
        "etc/group",
        "etc/resolv.conf",
        "etc/cloud/cloud.cfg",
        "etc/istio-vm/config.toml",
        "run/secrets/tokens/istio-token",
    ] {
        let root = debian_root();
        let r = root.path();
        fifo(&r.join(rel));
        let before = tree(r, false);
        let b = bounded(&strs(&install_args(r)), GUARD);
        assert!(
            matches!(b.code, Some(1..=3)),
            "{rel}: exit {:?}\n{}\n{}",
            b.code,
            b.stdout,
            b.stderr
        );
        let v: serde_json::Value = serde_json::from_str(&b.stdout)
            .unwrap_or_else(|e| panic!("{rel}: not JSON ({e}): {}\n{}", b.stdout, b.stderr));
        let err = v["error"].as_str().unwrap_or_default();
        let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(name) && (err.contains("FIFO") || err.contains("not a regular file")),
            "{rel}: {v:#}"
        );
        assert!(
            b.max_rss_kib < RSS_LIMIT_KIB,
            "{rel}: {} KiB",
            b.max_rss_kib
        );
        let after = tree(r, false);
        assert!(before == after, "{rel}:\n{}", tree_diff(&before, &after));
    }
}

#[test]
fn dev_zero_as_config_is_refused_at_bounded_memory() {
    require_root();
    let root = debian_root();
    let r = root.path();
    // Named on the command line.
    let mut args = vec!["--config".to_string(), "/dev/zero".into()];
    args.extend(install_args(r));
    let b = bounded(&strs(&args), GUARD);
    assert_eq!(b.code, Some(2), "{}\n{}", b.stdout, b.stderr);
    assert!(b.stdout.contains("character device"), "{}", b.stdout);
    assert!(b.max_rss_kib < RSS_LIMIT_KIB, "{} KiB", b.max_rss_kib);
    // A config file in the root that links to /dev/zero: inside the root,
    // where the tree has no /dev/zero, the link dangles and nothing is read.
    std::fs::create_dir_all(r.join("etc/istio-vm")).unwrap();
    symlink("/dev/zero", r.join("etc/istio-vm/config.toml")).unwrap();
    let b = bounded(&strs(&install_args(r)), GUARD);
    assert_eq!(b.code, Some(0), "{}\n{}", b.stdout, b.stderr);
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    // Where the tree has one (a mounted image), it is refused.
    dev_zero(r);
    for link in ["etc/passwd", "etc/resolv.conf"] {
        let _ = std::fs::remove_file(r.join(link));
        symlink("/dev/zero", r.join(link)).unwrap();
    }
    let b = bounded(&strs(&install_args(r)), GUARD);
    assert_eq!(b.code, Some(2), "{}\n{}", b.stdout, b.stderr);
    assert!(b.stdout.contains("character device"), "{}", b.stdout);
    assert!(b.max_rss_kib < RSS_LIMIT_KIB, "{} KiB", b.max_rss_kib);
    eprintln!("peak RSS of the refused runs: {} KiB", b.max_rss_kib);
}

#[test]
fn files_read_through_links_come_from_inside_the_root() {
    require_root();
    let root = debian_root();
    let r = root.path();
    // Host files outside the root that links in the tree point at.
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().canonicalize().unwrap();
    std::fs::write(
        o.join("passwd"),
        "istio-proxy:x:4242:4242::/var/lib/istio:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(o.join("group"), "istio-proxy:x:4242:\n").unwrap();
    std::fs::write(o.join("config.toml"), "capture = false\n").unwrap();
    symlink(o.join("passwd"), r.join("etc/passwd")).unwrap();
    symlink(o.join("group"), r.join("etc/group")).unwrap();
    std::fs::create_dir_all(r.join("etc/istio-vm")).unwrap();
    symlink(o.join("config.toml"), r.join("etc/istio-vm/config.toml")).unwrap();
    // cloud-init: the outside cloud.cfg would turn manage_etc_hosts on and
    // put our block into the tree's template.
    std::fs::write(o.join("cloud.cfg"), "manage_etc_hosts: true\n").unwrap();
    std::fs::create_dir_all(r.join("etc/cloud/templates")).unwrap();
    let tmpl = r.join("etc/cloud/templates/hosts.debian.tmpl");
    std::fs::write(&tmpl, "127.0.0.1 {{fqdn}}\n").unwrap();
    symlink(o.join("cloud.cfg"), r.join("etc/cloud/cloud.cfg")).unwrap();
    ok(&install(r, example(), &[], &[]));
    assert_eq!(
        std::fs::read_to_string(&tmpl).unwrap(),
        "127.0.0.1 {{fqdn}}\n"
    );
    // Not the outside user: the tree has none, so files stay root's.
    let tok = r.join("run/secrets/tokens/istio-token");
    assert_eq!(std::fs::metadata(&tok).unwrap().uid(), 0);
    // Not the outside config: capture stays on, and its record exempts no
    // uid 4242.
    assert!(
        r.join("etc/systemd/system/istio-vm-capture.service")
            .is_file()
    );
    for e in std::fs::read_dir(r.join("var/lib/istio-vm/capture")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains("4242"), "{text}");
    }
}

#[test]
fn an_in_root_parent_link_is_followed_inside_the_root() {
    require_root();
    // ROOT/var/lib -> /data/varlib, whether the target exists or not: as a
    // chroot would, the state lands in ROOT/data/varlib, and uninstall
    // gives back the exact tree.
    for target_exists in [true, false] {
        let root = debian_root();
        let r = root.path();
        std::fs::remove_dir(r.join("var/lib")).unwrap();
        if target_exists {
            std::fs::create_dir_all(r.join("data/varlib")).unwrap();
        }
        symlink("/data/varlib", r.join("var/lib")).unwrap();
        let before = tree(r, false);
        ok(&install(r, example(), &[], &[]));
        assert!(r.join("data/varlib/istio-vm/state.json").is_file());
        assert!(r.join("data/varlib/istio/envoy/cluster.env").is_file());
        let again = ok(&install(r, example(), &[], &[]));
        assert_eq!(again["changed"], false, "{again:#}");
        ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
        let after = tree(r, false);
        assert!(
            before == after,
            "target exists: {target_exists}\n{}",
            tree_diff(&before, &after)
        );
    }
}

#[test]
fn a_file_as_root_says_so() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("image.raw");
    std::fs::write(&f, "not a tree").unwrap();
    for cmd in [&["install", "--bundle"][..], &["uninstall"], &["verify"]] {
        let mut args = vec!["--root", f.to_str().unwrap(), "--output", "json"];
        args.extend_from_slice(cmd);
        if cmd[0] == "install" {
            args.push(example().to_str().unwrap());
        }
        let out = fx::run(&f, &args[2..], &[]);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let v = fx::json(&out);
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("is not a directory") && e.contains("--root takes the directory"),
            "{cmd:?}: {e}"
        );
    }
}

#[test]
fn no_lock_file_is_left_in_a_root_tree() {
    // A tree without /run/lock: the lock and the directory made for it go
    // again at the end of every run, so uninstall gives back the exact tree.
    let root = debian_root();
    let r = root.path();
    std::fs::remove_dir(r.join("run/lock")).unwrap();
    let before = tree(r, false);
    ok(&install(r, example(), &[], &[]));
    assert!(!r.join("run/lock").exists(), "install left /run/lock");
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    assert!(!r.join("run/lock").exists());
    let after = tree(r, false);
    assert!(before == after, "{}", tree_diff(&before, &after));
    // With /run/lock there, only the lock file goes.
    let root = debian_root();
    let r = root.path();
    ok(&install(r, example(), &[], &[]));
    assert!(r.join("run/lock").is_dir());
    assert!(!r.join("run/lock/istio-vm.lock").exists());
}

/// A read-only bind mount of `src`, unmounted on drop.
struct ReadOnly(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl ReadOnly {
    fn of(src: &Path) -> ReadOnly {
        use nix::mount::{MsFlags, mount};
        let t = tempfile::tempdir().unwrap();
        let dst = t.path().join("ro");
        std::fs::create_dir(&dst).unwrap();
        mount(
            Some(src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let ro = ReadOnly(dst.clone(), t);
        mount(
            None::<&str>,
            &dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
        ro
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn an_idempotent_install_on_a_read_only_root_succeeds() {
    require_root();
    let root = debian_root();
    let r = root.path();
    ok(&install(r, example(), &[], &[]));
    let before = tree(r, true);
    let ro = ReadOnly::of(r);
    let v = ok(&install(&ro.0, example(), &[], &[]));
    assert_eq!(v["changed"], false, "{v:#}");
    let v = ok(&install(&ro.0, example(), &["--check"], &[]));
    assert_eq!(v["changed"], false, "{v:#}");
    // A change it cannot make is a clean error naming the file system.
    let b = fx::bundle_copy();
    std::fs::write(
        b.path().join("hosts"),
        "203.0.113.99 istiod.istio-system.svc\n",
    )
    .unwrap();
    let out = install(&ro.0, b.path(), &[], &[]);
    assert_ne!(out.status.code(), Some(0));
    drop(ro);
    assert_eq!(tree(r, true), before);
}

#[test]
fn reinstalling_without_capture_removes_what_capture_placed() {
    let original = debian_root();
    let root = debian_root();
    let r = root.path();
    ok(&install(r, example(), &[], &[]));
    let unit = r.join("etc/systemd/system/istio-vm-capture.service");
    let record = r.join("var/lib/istio-vm/capture");
    assert!(unit.is_file() && record.is_dir());
    let v = ok(&install(r, example(), &["--no-capture"], &[]));
    assert_eq!(v["changed"], true);
    assert!(!unit.exists(), "capture unit left in place");
    assert!(!record.exists(), "rule record left in place");
    let state = std::fs::read_to_string(r.join("var/lib/istio-vm/state.json")).unwrap();
    assert!(!state.contains("capture"), "{state}");
    let again = ok(&install(r, example(), &["--no-capture"], &[]));
    assert_eq!(again["changed"], false, "{again:#}");
    // Reversible: capture comes back, and uninstall restores the tree.
    ok(&install(r, example(), &[], &[]));
    assert!(unit.is_file() && record.is_dir());
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    let (a, b) = (tree(original.path(), false), tree(r, false));
    assert!(a == b, "{}", tree_diff(&a, &b));
}

#[test]
fn a_fifo_at_a_file_verify_reads_does_not_hang_it() {
    require_root();
    for rel in [
        "var/log/istio/istio.log",
        "etc/passwd",
        "etc/group",
        "run/secrets/tokens/istio-token",
        "etc/certs/root-cert.pem",
    ] {
        let root = debian_root();
        let r = root.path();
        ok(&install(r, example(), &[], &[]));
        fifo(&r.join(rel));
        let args = [
            "--root",
            r.to_str().unwrap(),
            "--output",
            "json",
            "verify",
            "--timeout",
            "1s",
        ];
        let b = bounded(&args, GUARD);
        // Failed checks (exit 1) are expected in an empty network namespace;
        // what matters is a report, not a hang.
        assert!(
            matches!(b.code, Some(0..=2)),
            "{rel}: {:?}\n{}\n{}",
            b.code,
            b.stdout,
            b.stderr
        );
        let v: serde_json::Value = serde_json::from_str(&b.stdout)
            .unwrap_or_else(|e| panic!("{rel}: not JSON ({e}): {}\n{}", b.stdout, b.stderr));
        assert!(
            v["checks"].as_array().is_some_and(|c| !c.is_empty()),
            "{rel}: {v:#}"
        );
        if rel != "etc/passwd" && rel != "etc/group" {
            let shown = v.to_string();
            assert!(
                shown.contains("FIFO") || shown.contains("not a regular file"),
                "{rel}: the report does not say what is wrong: {v:#}"
            );
        }
        assert!(
            b.max_rss_kib < RSS_LIMIT_KIB,
            "{rel}: {} KiB",
            b.max_rss_kib
        );
    }
}

#[test]
fn a_huge_target_file_is_refused_at_bounded_memory() {
    // A 4 GiB (sparse) /etc/hosts: refused by size, never read into memory.
    let root = debian_root();
    let r = root.path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(r.join("etc/hosts"))
        .unwrap();
    f.set_len(4 << 30).unwrap();
    drop(f);
    let b = bounded(&strs(&install_args(r)), GUARD);
    assert_ne!(b.code, Some(0), "{}", b.stdout);
    assert!(
        b.stdout.contains("larger than"),
        "{}\n{}",
        b.stdout,
        b.stderr
    );
    assert!(b.max_rss_kib < RSS_LIMIT_KIB, "{} KiB", b.max_rss_kib);
}
