//! Every kill window converges (issue #16.4): `kill -9` at every syscall
//! that changes the tree (strace's syscall injection), for a first install,
//! a token rotation and an uninstall. After each kill the next run
//! converges, and after a final uninstall the tree is byte-, mode- and
//! owner-identical to the original, with no `backup/` left. This covers the
//! cleanup after a commit (pruning backups, finishing an uninstall) and the
//! window between creating /var/lib/istio-vm and the first journal.
//!
//! Each operation runs on trees of three shapes: a Debian one, a bare one
//! without `/var/lib` and `/run/lock` (every directory on the way to our
//! bookkeeping, and the lock's, would be made by the run), and one where
//! the VM already has its own empty `/var/lib/istio-vm` (which must be
//! left as it was: not ours).

mod common;
#[path = "common/apply.rs"]
mod fx;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use fx::{debian_root, install, ok, placed, tree, tree_diff};

/// The tree shapes every kill is tried on.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Debian,
    /// No `/var/lib`, no `/run/lock`.
    Bare,
    /// The VM's own empty `/var/lib/istio-vm` (mode 0750, group adm).
    OwnStateDir,
}

fn make(shape: Shape) -> tempfile::TempDir {
    let t = debian_root();
    let r = t.path();
    match shape {
        Shape::Debian => {}
        Shape::Bare => {
            std::fs::remove_dir(r.join("var/lib")).unwrap();
            std::fs::remove_dir(r.join("run/lock")).unwrap();
        }
        Shape::OwnStateDir => {
            let d = r.join("var/lib/istio-vm");
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(0), Some(4)).unwrap();
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o750))
                .unwrap();
        }
    }
    t
}

/// Syscalls that change a tree: creating, removing and renaming entries,
/// owners and modes, file contents.
const CHANGING: &[&str] = &[
    "mkdir",
    "mkdirat",
    "unlink",
    "unlinkat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "fchown",
    "fchownat",
    "fchmod",
    "fchmodat",
    "write",
];

fn example() -> &'static Path {
    common::example_bundle()
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_istio-vm")
}

fn args(root: &Path, cmd: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--root".to_string(),
        root.to_str().unwrap().into(),
        "--output".into(),
        "json".into(),
    ];
    v.extend(cmd.iter().map(|s| s.to_string()));
    v
}

/// How many times a run calls each changing syscall.
fn count(root: &Path, cmd: &[&str]) -> BTreeMap<String, usize> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(log.path())
        .arg("-e")
        .arg(format!("trace={}", CHANGING.join(",")))
        .arg(bin())
        .args(args(root, cmd))
        .env_remove("ISTIO_VM_FAILPOINT")
        .output()
        .expect("strace (scripts/install-test-deps.sh installs it)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    let mut n = BTreeMap::new();
    for l in std::fs::read_to_string(log.path()).unwrap().lines() {
        // "PID name(args..." ; "<... name resumed>" continues a call.
        let rest = l.split_once(' ').map(|x| x.1).unwrap_or(l).trim_start();
        if let Some((name, _)) = rest.split_once('(')
            && CHANGING.contains(&name)
        {
            *n.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    n
}

/// Run `cmd`, killed (SIGKILL) when it enters its `nth` `syscall`. Returns
/// whether it died.
fn killed_at(root: &Path, cmd: &[&str], syscall: &str, nth: usize) -> bool {
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null"])
        .arg("-e")
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=SIGKILL:when={nth}"))
        .arg(bin())
        .args(args(root, cmd))
        .env_remove("ISTIO_VM_FAILPOINT")
        .output()
        .expect("strace");
    out.status.code().is_none()
}

fn new_token_bundle() -> tempfile::TempDir {
    let b = fx::bundle_copy();
    let tok = std::fs::read_to_string(b.path().join("istio-token")).unwrap();
    let (head, _) = tok.trim().rsplit_once('.').unwrap();
    std::fs::write(
        b.path().join("istio-token"),
        format!("{head}.{}", "Zm9v".repeat(16)),
    )
    .unwrap();
    b
}

/// For every changing syscall of `cmd` run on a tree of `shape` that
/// `setup` prepares: kill it there, then `converge` must bring the tree to
/// `want` (compared without backups' names), and a final uninstall to the
/// original tree (bytes, modes, owners; the lock file included), with no
/// `backup/` left. Returns the number of kill points.
fn every_kill_converges(
    shape: Shape,
    setup: impl Fn(&Path),
    cmd: &[&str],
    converge: impl Fn(&Path),
    want: Option<BTreeMap<String, String>>,
) -> usize {
    let original = tree(make(shape).path(), false);
    let probe = make(shape);
    setup(probe.path());
    let counts = count(probe.path(), cmd);
    let total: usize = counts.values().sum();
    assert!(total >= 5, "{shape:?}: {counts:?}");
    let mut died = 0;
    for (syscall, n) in &counts {
        for nth in 1..=*n {
            let root = make(shape);
            let r = root.path();
            setup(r);
            died += usize::from(killed_at(r, cmd, syscall, nth));
            let at = format!("{shape:?}: killed at {syscall} #{nth}");
            converge(r);
            assert!(!r.join("var/lib/istio-vm/journal.json").exists(), "{at}");
            if let Some(want) = &want {
                let got = placed(r);
                assert!(
                    *want == got,
                    "{at}: did not converge:\n{}",
                    tree_diff(want, &got)
                );
            }
            ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
            let end = tree(r, false);
            assert!(
                original == end,
                "{at}: not the original tree after uninstall:\n{}",
                tree_diff(&original, &end)
            );
            assert!(!r.join("var/lib/istio-vm/backup").exists(), "{at}");
        }
    }
    // The injection works: nearly every run died where it was told to.
    assert!(
        died * 10 >= total * 9,
        "{shape:?}: only {died} of {total} runs were killed"
    );
    eprintln!("{cmd:?} on {shape:?}: {total} kill points ({counts:?})");
    total
}

fn first_install(shape: Shape) {
    let b = example().to_str().unwrap();
    let reference = make(shape);
    ok(&install(reference.path(), example(), &[], &[]));
    every_kill_converges(
        shape,
        |_| {},
        &["install", "--bundle", b],
        |r| {
            ok(&install(r, example(), &[], &[]));
        },
        Some(placed(reference.path())),
    );
}

fn token_rotation(shape: Shape) {
    let nb = new_token_bundle();
    let b = nb.path().to_str().unwrap();
    let reference = make(shape);
    ok(&install(reference.path(), example(), &[], &[]));
    ok(&install(reference.path(), nb.path(), &[], &[]));
    let want = placed(reference.path());
    every_kill_converges(
        shape,
        |r| {
            ok(&install(r, example(), &[], &[]));
        },
        &["install", "--bundle", b],
        |r| {
            ok(&install(r, nb.path(), &[], &[]));
            // Only the backup the state refers to is left: the rotated-out
            // token's copy is gone.
            let n = std::fs::read_dir(r.join("var/lib/istio-vm/backup"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(n <= 1, "{n} backups left");
        },
        Some(want),
    );
}

fn uninstall(shape: Shape) {
    every_kill_converges(
        shape,
        |r| {
            ok(&install(r, example(), &[], &[]));
        },
        &["uninstall"],
        |r| {
            ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
        },
        None,
    );
}

#[test]
fn a_kill_anywhere_in_a_first_install_converges() {
    first_install(Shape::Debian);
}

#[test]
fn a_kill_anywhere_in_a_first_install_on_a_bare_tree_converges() {
    first_install(Shape::Bare);
}

#[test]
fn a_kill_anywhere_in_a_first_install_keeps_an_own_state_dir() {
    first_install(Shape::OwnStateDir);
}

#[test]
fn a_kill_anywhere_in_a_token_rotation_converges() {
    token_rotation(Shape::Debian);
}

/// Every run of a bare tree takes the lock without making `/run/lock`.
#[test]
fn a_kill_anywhere_in_a_token_rotation_on_a_bare_tree_converges() {
    token_rotation(Shape::Bare);
}

#[test]
fn a_kill_anywhere_in_an_uninstall_converges() {
    uninstall(Shape::Debian);
}

#[test]
fn a_kill_anywhere_in_an_uninstall_on_a_bare_tree_converges() {
    uninstall(Shape::Bare);
}

#[test]
fn a_kill_anywhere_in_an_uninstall_keeps_an_own_state_dir() {
    uninstall(Shape::OwnStateDir);
}

/// Uninstall with nothing installed leaves the VM's own empty
/// `/var/lib/istio-vm` alone (it is not ours: no record names it).
#[test]
fn uninstall_with_nothing_installed_keeps_an_empty_own_state_dir() {
    let root = make(Shape::OwnStateDir);
    let r = root.path();
    let before = tree(r, false);
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    let after = tree(r, false);
    assert!(before == after, "{}", tree_diff(&before, &after));
}

/// A second kill, in the run that cleans up after the first: an install
/// killed with its journal on disk (files half placed) is rolled back by the
/// next run (an uninstall: the rollback is all it does), which is itself
/// killed at every changing syscall; the run after it and a final uninstall
/// must still give back the original tree.
#[test]
fn a_kill_in_the_run_that_rolls_back_an_install_converges() {
    let b = example().to_str().unwrap();
    every_kill_converges(
        Shape::Bare,
        |r| {
            assert!(killed_at(r, &["install", "--bundle", b], "renameat", 12));
            assert!(
                r.join("var/lib/istio-vm/journal.json").is_file(),
                "the first kill left no journal: the test proves nothing"
            );
        },
        &["uninstall"],
        |r| {
            ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
        },
        None,
    );
}

/// The same for an uninstall killed after its commit (its tombstone state
/// names what is left to remove): the run finishing it is killed at every
/// changing syscall.
#[test]
fn a_kill_in_the_run_that_finishes_an_uninstall_converges() {
    every_kill_converges(
        Shape::Bare,
        |r| {
            ok(&install(r, example(), &[], &[]));
            assert!(killed_at(r, &["uninstall"], "unlinkat", 70));
            let state = std::fs::read_to_string(r.join("var/lib/istio-vm/state.json"))
                .expect("the first kill left no tombstone state: the test proves nothing");
            let v: serde_json::Value = serde_json::from_str(&state).unwrap();
            assert!(
                v["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["meta"] == true),
                "not a tombstone: {state}"
            );
        },
        &["uninstall"],
        |r| {
            ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
        },
        None,
    );
}
