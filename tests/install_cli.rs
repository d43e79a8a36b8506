//! install/uninstall under `--root` in scratch trees: idempotence,
//! reversibility, refusal of symlinks, concurrency, token secrecy, the
//! /etc/hosts block, token rotation, cloud-init, check/diff.

mod common;
#[path = "common/apply.rs"]
mod fx;
#[path = "common/pinned.rs"]
mod pinned;

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use base64::Engine;
use fx::{debian_root, install, ok, placed, steps_with, tree, tree_diff};

fn example() -> &'static Path {
    common::example_bundle()
}

fn token() -> String {
    std::fs::read_to_string(example().join("istio-token"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn second_install_changes_nothing() {
    let root = debian_root();
    let r = root.path();
    let first = ok(&install(r, example(), &[], &[]));
    assert_eq!(first["changed"], true);
    // Under --root each run makes its lock file and removes it again (an
    // image must not carry it), which touches /run/lock's times only.
    let lockless = |mut t: std::collections::BTreeMap<String, String>| {
        t.remove("run/lock");
        t
    };
    let before = lockless(tree(r, true));
    let second = ok(&install(r, example(), &[], &[]));
    assert_eq!(second["changed"], false, "{second:#}");
    assert!(steps_with(&second, "changed").is_empty(), "{second:#}");
    let after = lockless(tree(r, true));
    assert!(
        before == after,
        "a no-op run touched files:\n{}",
        tree_diff(&before, &after)
    );
}

#[test]
fn files_land_where_design_says() {
    let root = debian_root();
    let r = root.path();
    ok(&install(r, example(), &[], &[]));
    let read = |p: &str| std::fs::read(r.join(p)).unwrap();
    assert_eq!(read("etc/certs/root-cert.pem"), read_ex("root-cert.pem"));
    // var/run -> /run resolves inside the root.
    assert_eq!(
        read("run/secrets/tokens/istio-token"),
        read_ex("istio-token")
    );
    assert_eq!(read("var/lib/istio-vm/istio-token"), read_ex("istio-token"));
    assert_eq!(
        read("var/lib/istio/envoy/cluster.env"),
        read_ex("cluster.env")
    );
    assert_eq!(read("etc/istio/config/mesh"), read_ex("mesh.yaml"));
    let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("run/secrets/tokens/istio-token"), 0o600);
    assert_eq!(mode("var/lib/istio-vm/istio-token"), 0o600);
    assert_eq!(mode("etc/certs/root-cert.pem"), 0o644);
    let hosts = String::from_utf8(read("etc/hosts")).unwrap();
    assert!(
        hosts.ends_with("# BEGIN istio-vm\n203.0.113.10 istiod.istio-system.svc\n# END istio-vm\n")
    );
    // Units, tmpfiles.d and sysusers.d: their text as reviewed in the
    // snapshots (tests/snapshots/install_cli__placed_*.snap), and their mode
    // as docs/DESIGN.md's table says; not as units::render makes them (their
    // behaviour is tested on a booted Debian in tests/e2e_systemd.rs).
    let generated = ["/etc/systemd/", "/etc/tmpfiles.d/", "/etc/sysusers.d/"];
    let mut seen = 0;
    for (path, _, _, want_mode) in pinned::PINNED {
        if !generated.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        let text = String::from_utf8(read(path.trim_start_matches('/'))).unwrap();
        insta::assert_snapshot!(format!("placed{}", path.replace('/', "_")), text);
        assert_eq!(mode(path.trim_start_matches('/')), *want_mode, "{path}");
        seen += 1;
    }
    assert_eq!(seen, 4);
    // Nothing escaped the root through var/run.
    assert!(
        !Path::new("/run/secrets/tokens/istio-token").exists() || {
            std::fs::read("/run/secrets/tokens/istio-token").unwrap() != read_ex("istio-token")
        }
    );
}

fn read_ex(name: &str) -> Vec<u8> {
    std::fs::read(example().join(name)).unwrap()
}

#[test]
fn uninstall_restores_the_exact_tree() {
    let root = debian_root();
    let r = root.path();
    // Things that were there before: a cert with other content and mode,
    // /etc/certs with its own mode, a CRLF hosts file without final newline.
    std::fs::create_dir_all(r.join("etc/certs")).unwrap();
    std::fs::set_permissions(
        r.join("etc/certs"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(r.join("etc/certs/root-cert.pem"), "old cert\n").unwrap();
    std::fs::set_permissions(
        r.join("etc/certs/root-cert.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        r.join("etc/hosts"),
        "127.0.0.1 localhost\r\n# keep me\r\n::1 x",
    )
    .unwrap();
    let before = tree(r, false);
    ok(&install(r, example(), &[], &[]));
    assert_ne!(tree(r, false), before);
    let un = ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    assert_eq!(un["changed"], true);
    let after = tree(r, false);
    assert!(
        before == after,
        "uninstall left differences:\n{}",
        tree_diff(&before, &after)
    );
    let again = ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    assert_eq!(again["changed"], false, "{again:#}");
    assert_eq!(tree(r, false), before);
}

#[test]
fn symlink_at_any_target_is_refused() {
    let probe = debian_root();
    let p = probe.path();
    let plan = ok(&install(p, example(), &["--check"], &[]));
    let targets: Vec<String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            let id = s["id"].as_str().unwrap();
            id.strip_prefix("file:")
                .or_else(|| id.strip_prefix("hosts:"))
                .or_else(|| id.strip_prefix("dir:"))
                .map(str::to_string)
        })
        .collect();
    assert!(targets.len() >= 10, "{targets:?}");
    for t in targets {
        let root = debian_root();
        let r = root.path();
        // The "secret" the link points to, inside and outside the root.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), "shadow\n").unwrap();
        let real = t.replace("/var/run/", "/run/");
        let link = fx::host(r, &real);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&link);
        symlink(outside.path(), &link).unwrap();
        let before = tree(r, false);
        let out = install(r, example(), &[], &[]);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{t}: a symlink target was accepted"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("symbolic link"), "{t}: {text}");
        assert_eq!(
            std::fs::read_to_string(outside.path()).unwrap(),
            "shadow\n",
            "{t}"
        );
        let after = tree(r, false);
        assert!(
            before == after,
            "{t}: tree changed:\n{}",
            tree_diff(&before, &after)
        );
    }
}

#[test]
fn concurrent_installs_end_in_one_state() {
    let root = debian_root();
    let r = root.path().to_path_buf();
    let reference = debian_root();
    ok(&install(reference.path(), example(), &[], &[]));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let r = r.clone();
            std::thread::spawn(move || install(&r, example(), &[], &[]))
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let changed = outs.iter().filter(|o| ok(o)["changed"] == true).count();
    assert_eq!(
        changed, 1,
        "exactly one run does the work, the others wait and see no change"
    );
    let a = placed(reference.path());
    let b = placed(&r);
    assert!(a == b, "{}", tree_diff(&a, &b));
    assert!(!r.join("var/lib/istio-vm/journal.json").exists());
}

/// Every file under `dir` that contains the token must be unreadable by
/// group and others, and so must its directory chain up to the state dir.
fn assert_token_private(r: &Path, tok: &str) {
    for (rel, line) in tree(r, false) {
        if !line.starts_with("file") {
            continue;
        }
        let bytes = std::fs::read(r.join(&rel)).unwrap();
        if String::from_utf8_lossy(&bytes).contains(tok) {
            let mode = std::fs::metadata(r.join(&rel)).unwrap().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{rel} holds the token with mode {mode:o}");
            assert!(
                !rel.ends_with("state.json") && !rel.ends_with("journal.json"),
                "{rel} holds the token"
            );
        }
    }
}

#[test]
fn token_never_shown_or_world_readable() {
    let root = debian_root();
    let r = root.path();
    let tok = token();
    // A token already there before: its backup must be private too.
    std::fs::create_dir_all(r.join("run/secrets/tokens")).unwrap();
    std::fs::write(
        r.join("run/secrets/tokens/istio-token"),
        format!("{tok}-old"),
    )
    .unwrap();
    let check = |o: &std::process::Output| {
        for s in [&o.stdout, &o.stderr] {
            let s = String::from_utf8_lossy(s);
            assert!(!s.contains(&tok[20..60]), "token in output: {s}");
        }
    };
    let plan = install(r, example(), &["--check", "--diff"], &[]);
    check(&plan);
    let v = ok(&plan);
    let diff = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "file:/var/run/secrets/tokens/istio-token")
        .unwrap()["diff"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(diff.contains("secret content not shown"), "{diff}");
    check(&fx::run(
        r,
        &["install", "--bundle", example().to_str().unwrap(), "--diff"],
        &[],
    ));
    assert_token_private(r, &tok);
    let state = std::fs::read_to_string(r.join("var/lib/istio-vm/state.json")).unwrap();
    assert!(!state.contains(&tok[20..60]));
    let bdir = r.join("var/lib/istio-vm/backup");
    assert_eq!(std::fs::metadata(&bdir).unwrap().mode() & 0o777, 0o700);
    check(&fx::run(r, &["--output", "json", "uninstall"], &[]));
}

fn rotated_token() -> String {
    let tok = token();
    let parts: Vec<&str> = tok.split('.').collect();
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&e.decode(parts[1]).unwrap()).unwrap();
    claims["iat"] = serde_json::json!(claims["iat"].as_i64().unwrap() + 3600);
    common::bundlegen::jwt(&claims)
}

#[test]
fn a_new_token_changes_only_the_token_files() {
    let root = debian_root();
    let r = root.path();
    ok(&install(r, example(), &[], &[]));
    let before = placed(r);
    let b = fx::bundle_copy();
    std::fs::write(b.path().join("istio-token"), rotated_token()).unwrap();
    let v = ok(&install(r, b.path(), &[], &[]));
    let mut changed = steps_with(&v, "changed");
    changed.sort();
    assert_eq!(
        changed,
        [
            "file:/var/lib/istio-vm/istio-token",
            "file:/var/run/secrets/tokens/istio-token"
        ]
    );
    let after = placed(r);
    let differing: std::collections::BTreeSet<&str> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(String::as_str)
        .collect();
    assert_eq!(
        differing.into_iter().collect::<Vec<_>>(),
        [
            "run/secrets/tokens/istio-token",
            "var/lib/istio-vm/istio-token"
        ]
    );
}

#[test]
fn hosts_edge_cases() {
    let block = "# BEGIN istio-vm\n203.0.113.10 istiod.istio-system.svc\n# END istio-vm";
    let big: String = (0..100_000)
        .map(|i| {
            format!(
                "10.{}.{}.{} host{i}.example\n",
                i / 65536,
                i / 256 % 256,
                i % 256
            )
        })
        .collect();
    let cases: Vec<(&str, String, String)> = vec![
        ("empty", String::new(), format!("{block}\n")),
        (
            "no final newline",
            "127.0.0.1 localhost".into(),
            format!("127.0.0.1 localhost\n{block}"),
        ),
        (
            "crlf",
            "127.0.0.1 localhost\r\n# c\r\n".into(),
            format!("127.0.0.1 localhost\r\n# c\r\n{}\r\n", block.replace('\n', "\r\n")),
        ),
        (
            "old block from a previous bundle",
            "a\n# BEGIN istio-vm\n10.0.0.9 istiod.old.svc\n# END istio-vm\nb\n".into(),
            format!("a\n{block}\nb\n"),
        ),
        (
            "hand-edited block",
            "# BEGIN istio-vm\n203.0.113.10 istiod.istio-system.svc # mine\n10.1.1.1 extra\n# END istio-vm\n"
                .into(),
            format!("{block}\n"),
        ),
        ("100 000 lines", big.clone(), format!("{big}{block}\n")),
    ];
    for (name, before, want) in cases {
        let root = debian_root();
        let r = root.path();
        std::fs::write(r.join("etc/hosts"), &before).unwrap();
        ok(&install(r, example(), &[], &[]));
        let got = std::fs::read_to_string(r.join("etc/hosts")).unwrap();
        assert!(
            got == want,
            "{name}: got {:?}",
            &got[got.len().saturating_sub(200)..]
        );
        ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
        let back = std::fs::read_to_string(r.join("etc/hosts")).unwrap();
        // A block that was there before install (an old bundle's, or one
        // edited by hand) is restored as it was, not deleted (issue #16.2).
        let expect = before.clone().into_bytes();
        assert!(
            back.as_bytes() == expect,
            "{name}: uninstall gave {:?}",
            &back[back.len().saturating_sub(200)..]
        );
    }
}

#[test]
fn broken_block_is_refused_before_any_change() {
    let root = debian_root();
    let r = root.path();
    std::fs::write(r.join("etc/hosts"), "# BEGIN istio-vm\n1.2.3.4 x\n").unwrap();
    let before = tree(r, false);
    let out = install(r, example(), &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no `# END istio-vm`"));
    assert_eq!(tree(r, false), before);
}

#[test]
fn cloud_init_template_gets_the_block() {
    let root = debian_root();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/cloud/cloud.cfg.d")).unwrap();
    std::fs::create_dir_all(r.join("etc/cloud/templates")).unwrap();
    std::fs::write(r.join("etc/cloud/cloud.cfg"), "manage_etc_hosts: false\n").unwrap();
    std::fs::write(
        r.join("etc/cloud/cloud.cfg.d/99-hosts.cfg"),
        "manage_etc_hosts: true\n",
    )
    .unwrap();
    let tmpl = "## template:jinja\n127.0.1.1 {{fqdn}} {{hostname}}\n127.0.0.1 localhost\n";
    std::fs::write(r.join("etc/cloud/templates/hosts.debian.tmpl"), tmpl).unwrap();
    let before = tree(r, false);
    let v = ok(&install(r, example(), &[], &[]));
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "hosts:/etc/cloud/templates/hosts.debian.tmpl")
        .expect("a step for the cloud-init template")
        .clone();
    assert_eq!(step["status"], "changed");
    assert!(step["detail"].as_str().unwrap().contains("cloud-init"));
    let got = std::fs::read_to_string(r.join("etc/cloud/templates/hosts.debian.tmpl")).unwrap();
    assert!(got.starts_with(tmpl) && got.contains("203.0.113.10 istiod.istio-system.svc"));
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    assert_eq!(tree(r, false), before);

    // Without manage_etc_hosts the template is left alone.
    let root = debian_root();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/cloud/templates")).unwrap();
    std::fs::write(r.join("etc/cloud/templates/hosts.debian.tmpl"), tmpl).unwrap();
    let v = ok(&install(r, example(), &[], &[]));
    assert!(!v.to_string().contains("hosts.debian.tmpl"));
}

#[test]
fn check_changes_nothing_and_diff_shows_text() {
    let root = debian_root();
    let r = root.path();
    std::fs::remove_dir(r.join("run/lock")).unwrap();
    let before = tree(r, true);
    let v = ok(&install(r, example(), &["--check", "--diff"], &[]));
    assert_eq!(v["check_mode"], true);
    assert_eq!(v["changed"], true);
    assert_eq!(
        tree(r, true),
        before,
        "--check must not create anything, not even the lock"
    );
    let hosts = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "hosts:/etc/hosts")
        .unwrap()["diff"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        hosts.contains("+203.0.113.10 istiod.istio-system.svc"),
        "{hosts}"
    );
    assert!(
        hosts.starts_with("--- /etc/hosts\n+++ /etc/hosts\n"),
        "{hosts}"
    );
    // Text output carries the diff too.
    let out = fx::run(
        r,
        &[
            "install",
            "--bundle",
            example().to_str().unwrap(),
            "--check",
            "--diff",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("+# BEGIN istio-vm"));
}

#[test]
fn invalid_bundle_is_refused_with_findings() {
    let root = debian_root();
    let r = root.path();
    let b = fx::bundle_copy();
    std::fs::remove_file(b.path().join("root-cert.pem")).unwrap();
    let before = tree(r, false);
    let out = install(r, b.path(), &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v = fx::json(&out);
    assert_eq!(v["ok"], false);
    assert!(
        v["findings"].to_string().contains("bundle.missing_file"),
        "{v:#}"
    );
    assert_eq!(tree(r, false), before);
}

#[test]
fn readme_first_command_works() {
    // `cargo run -- install --bundle examples/bundle --root "$(mktemp -d)"`:
    // an empty directory, text output.
    let t = tempfile::tempdir().unwrap();
    let out = fx::run(
        t.path(),
        &["install", "--bundle", example().to_str().unwrap()],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(t.path().join("etc/certs/root-cert.pem").is_file());
}

#[test]
fn a_missing_hosts_file_is_created_then_removed() {
    let root = debian_root();
    let r = root.path();
    std::fs::remove_file(r.join("etc/hosts")).unwrap();
    let before = tree(r, false);
    ok(&install(r, example(), &[], &[]));
    let hosts = std::fs::read_to_string(r.join("etc/hosts")).unwrap();
    assert!(hosts.starts_with("# BEGIN istio-vm\n"), "{hosts}");
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    assert_eq!(tree(r, false), before);
}

#[test]
fn a_bad_root_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let out = install(&t.path().join("missing"), example(), &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(fx::json(&out)["error"].as_str().unwrap().contains("--root"));
}

#[test]
fn uninstall_after_an_update_restores_the_state_before_the_first_install() {
    let root = debian_root();
    let r = root.path();
    std::fs::create_dir_all(r.join("var/lib/istio/envoy")).unwrap();
    std::fs::write(
        r.join("var/lib/istio/envoy/cluster.env"),
        "# from an earlier setup\n",
    )
    .unwrap();
    let before = tree(r, false);
    ok(&install(r, example(), &[], &[]));
    let b = fx::bundle_copy();
    let env = std::fs::read_to_string(b.path().join("cluster.env")).unwrap();
    std::fs::write(
        b.path().join("cluster.env"),
        env.replace(
            "ISTIO_INBOUND_PORTS='9080'",
            "ISTIO_INBOUND_PORTS='9080,9090'",
        ),
    )
    .unwrap();
    std::fs::write(
        b.path().join("hosts"),
        "203.0.113.11 istiod.istio-system.svc\n",
    )
    .unwrap();
    let v = ok(&install(r, b.path(), &["--diff"], &[]));
    let mut changed = steps_with(&v, "changed");
    changed.sort();
    // The capture rule record follows cluster.env's inbound ports.
    changed.retain(|id| !id.starts_with("file:/var/lib/istio-vm/capture/"));
    assert_eq!(
        changed,
        ["file:/var/lib/istio/envoy/cluster.env", "hosts:/etc/hosts"]
    );
    let diff = v["steps"].to_string();
    assert!(diff.contains("+ISTIO_INBOUND_PORTS='9080,9090'"), "{diff}");
    assert!(
        diff.contains("-203.0.113.10 istiod.istio-system.svc"),
        "{diff}"
    );
    let hosts = std::fs::read_to_string(r.join("etc/hosts")).unwrap();
    assert_eq!(hosts.matches("# BEGIN istio-vm").count(), 1);
    assert!(hosts.contains("203.0.113.11 istiod") && !hosts.contains("203.0.113.10"));
    ok(&fx::run(r, &["--output", "json", "uninstall"], &[]));
    let after = tree(r, false);
    assert!(before == after, "{}", tree_diff(&before, &after));
}

#[test]
fn a_held_lock_is_waited_for_then_reported() {
    let root = debian_root();
    let r = root.path();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(r.join("run/lock/istio-vm.lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let before = tree(r, false);
    let out = install(r, example(), &[], &[("ISTIO_VM_LOCK_TIMEOUT", "300ms")]);
    assert_eq!(out.status.code(), Some(1));
    let v = fx::json(&out);
    assert!(
        v["error"].as_str().unwrap().contains("lock_timeout"),
        "{v:#}"
    );
    assert_eq!(tree(r, false), before, "nothing changed while waiting");
    drop(held);
    ok(&install(
        r,
        example(),
        &[],
        &[("ISTIO_VM_LOCK_TIMEOUT", "300ms")],
    ));
}
