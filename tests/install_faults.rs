//! Fault injection (cargo feature `failpoints`): a failure at every step
//! leaves the tree exactly as before (exit 3); a crash (abort, as kill -9:
//! no cleanup) at every step is rolled back by the next run, which then
//! converges to the installed state.
#![cfg(feature = "failpoints")]

mod common;
#[path = "common/apply.rs"]
mod fx;

use std::path::Path;

use fx::{debian_root, install, ok, placed, tree, tree_diff};

fn example() -> &'static Path {
    common::example_bundle()
}

/// Every failpoint a run from this state passes, taken from its plan.
fn failpoints(root: &Path, bundle: &Path) -> Vec<String> {
    let plan = ok(&install(root, bundle, &["--check"], &[]));
    let mut names = vec![
        "backup".to_string(),
        "prepare:written".into(),
        "backup:written".into(),
        "journal:written".into(),
        "journal".into(),
    ];
    for s in plan["steps"].as_array().unwrap() {
        if s["status"] != "changed" {
            continue;
        }
        let id = s["id"].as_str().unwrap();
        names.push(id.to_string());
        if id.starts_with("file:") || id.starts_with("hosts:") {
            names.push(format!("{id}:written"));
        }
    }
    names.extend(["state".into(), "state:written".into(), "commit".into()]);
    names
}

fn new_token_bundle() -> tempfile::TempDir {
    let b = fx::bundle_copy();
    let tok = std::fs::read_to_string(b.path().join("istio-token")).unwrap();
    // Same claims, different signature bytes: a different token.
    let (head, _) = tok.trim().rsplit_once('.').unwrap();
    std::fs::write(
        b.path().join("istio-token"),
        format!("{head}.{}", "Zm9v".repeat(16)),
    )
    .unwrap();
    b
}

#[test]
fn a_failure_at_any_step_leaves_the_tree_untouched() {
    let names = failpoints(debian_root().path(), example());
    assert!(names.len() > 20, "{names:?}");
    for fp in &names {
        let root = debian_root();
        let r = root.path();
        let before = tree(r, false);
        let out = install(r, example(), &[], &[("ISTIO_VM_FAILPOINT", fp)]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{fp}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v = fx::json(&out);
        assert!(
            v["error"].as_str().unwrap().contains("rolled back"),
            "{fp}: {v:#}"
        );
        let after = tree(r, false);
        assert!(
            before == after,
            "{fp}: tree differs after rollback:\n{}",
            tree_diff(&before, &after)
        );
    }
}

#[test]
fn a_failed_update_restores_the_installed_files() {
    let probe = debian_root();
    ok(&install(probe.path(), example(), &[], &[]));
    let b = new_token_bundle();
    let names = failpoints(probe.path(), b.path());
    for fp in &names {
        let root = debian_root();
        let r = root.path();
        ok(&install(r, example(), &[], &[]));
        let before = tree(r, false);
        let out = install(r, b.path(), &[], &[("ISTIO_VM_FAILPOINT", fp)]);
        assert_eq!(out.status.code(), Some(3), "{fp}");
        let after = tree(r, false);
        assert!(before == after, "{fp}:\n{}", tree_diff(&before, &after));
    }
}

#[test]
fn a_crash_at_any_step_is_rolled_back_then_redone() {
    let reference = debian_root();
    ok(&install(reference.path(), example(), &[], &[]));
    let want = placed(reference.path());
    let names = failpoints(debian_root().path(), example());
    for fp in &names {
        let root = debian_root();
        let r = root.path();
        let abort = format!("{fp}:abort");
        let out = install(r, example(), &[], &[("ISTIO_VM_FAILPOINT", &abort)]);
        assert_eq!(out.status.code(), None, "{fp}: the run was expected to die");
        let v = ok(&install(r, example(), &[], &[]));
        assert_eq!(v["changed"], true, "{fp}");
        let got = placed(r);
        assert!(
            want == got,
            "{fp}: did not converge:\n{}",
            tree_diff(&want, &got)
        );
        assert!(!r.join("var/lib/istio-vm/journal.json").exists(), "{fp}");
        // Only the backup the state refers to is left.
        let backups = std::fs::read_dir(r.join("var/lib/istio-vm/backup"))
            .unwrap()
            .count();
        assert_eq!(backups, 1, "{fp}");
        let again = ok(&install(r, example(), &[], &[]));
        assert_eq!(again["changed"], false, "{fp}");
        // And it still uninstalls cleanly.
        ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
        assert_eq!(tree(r, false), tree(debian_root().path(), false), "{fp}");
    }
}

#[test]
fn a_failed_uninstall_keeps_the_installation() {
    for fp in [
        "backup",
        "journal",
        "file:/etc/certs/root-cert.pem",
        "hosts:/etc/hosts:written",
        "state",
        "commit",
    ] {
        let root = debian_root();
        let r = root.path();
        ok(&install(r, example(), &[], &[]));
        let before = tree(r, false);
        let out = fx::run(
            r,
            &["--output", "json", "uninstall"],
            &[("ISTIO_VM_FAILPOINT", fp)],
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{fp}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let after = tree(r, false);
        assert!(before == after, "{fp}:\n{}", tree_diff(&before, &after));
    }
}

#[test]
fn a_crash_during_an_update_converges_to_the_new_bundle() {
    let b = new_token_bundle();
    let reference = debian_root();
    ok(&install(reference.path(), example(), &[], &[]));
    let names = failpoints(reference.path(), b.path());
    ok(&install(reference.path(), b.path(), &[], &[]));
    let want = placed(reference.path());
    for fp in &names {
        let root = debian_root();
        let r = root.path();
        ok(&install(r, example(), &[], &[]));
        let abort = format!("{fp}:abort");
        let out = install(r, b.path(), &[], &[("ISTIO_VM_FAILPOINT", &abort)]);
        assert_eq!(out.status.code(), None, "{fp}: the run was expected to die");
        ok(&install(r, b.path(), &[], &[]));
        let got = placed(r);
        assert!(
            want == got,
            "{fp}: did not converge:\n{}",
            tree_diff(&want, &got)
        );
        ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
        assert_eq!(tree(r, false), tree(debian_root().path(), false), "{fp}");
    }
}
