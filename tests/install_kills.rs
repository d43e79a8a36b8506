//! Every kill window converges (issue #16.4): `kill -9` at every syscall
//! that changes the tree (strace's syscall injection), for a first install,
//! a token rotation and an uninstall. After each kill the next run
//! converges, and after a final uninstall the tree is byte-, mode- and
//! owner-identical to the original, with no `backup/` left. This covers the
//! cleanup after a commit (pruning backups, finishing an uninstall) and the
//! window between creating /var/lib/istio-vm and the first journal.

mod common;
#[path = "common/apply.rs"]
mod fx;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use fx::{debian_root, install, ok, placed, tree, tree_diff};

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

/// For every changing syscall of `cmd` run on a tree `setup` makes: kill it
/// there, then `converge` must bring the tree to `want` (compared without
/// backups' names), and a final uninstall to the original tree.
fn every_kill_converges(
    setup: impl Fn(&Path),
    cmd: &[&str],
    converge: impl Fn(&Path),
    want: Option<BTreeMap<String, String>>,
) {
    let original = tree(debian_root().path(), false);
    let probe = debian_root();
    setup(probe.path());
    let counts = count(probe.path(), cmd);
    let total: usize = counts.values().sum();
    assert!(total > 20, "{counts:?}");
    let mut died = 0;
    for (syscall, n) in &counts {
        for nth in 1..=*n {
            let root = debian_root();
            let r = root.path();
            setup(r);
            died += usize::from(killed_at(r, cmd, syscall, nth));
            let at = format!("killed at {syscall} #{nth}");
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
            assert!(!r.join("var/lib/istio-vm").exists(), "{at}");
        }
    }
    // The injection works: nearly every run died where it was told to.
    assert!(
        died * 10 >= total * 9,
        "only {died} of {total} runs were killed"
    );
}

#[test]
fn a_kill_anywhere_in_a_first_install_converges() {
    let reference = debian_root();
    ok(&install(reference.path(), example(), &[], &[]));
    let b = example().to_str().unwrap();
    every_kill_converges(
        |_| {},
        &["install", "--bundle", b],
        |r| {
            ok(&install(r, example(), &[], &[]));
        },
        Some(placed(reference.path())),
    );
}

#[test]
fn a_kill_anywhere_in_a_token_rotation_converges() {
    let nb = new_token_bundle();
    let reference = debian_root();
    ok(&install(reference.path(), example(), &[], &[]));
    ok(&install(reference.path(), nb.path(), &[], &[]));
    let want = placed(reference.path());
    let b = nb.path().to_str().unwrap();
    every_kill_converges(
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

#[test]
fn a_kill_anywhere_in_an_uninstall_converges() {
    every_kill_converges(
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
