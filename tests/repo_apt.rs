//! scripts/build-repo.sh's apt repository for real: signed with a throwaway
//! key, served by a static HTTP server in a namespace of the test's LAN
//! (198.51.100.1), and used by apt in a booted Debian on that LAN: a deb822
//! `.sources` with `Signed-By:`, `apt-get install istio-vm`, `apt-get
//! upgrade` to a newer version published later, and apt refusing a forged
//! signature, a tampered `Packages` and a tampered `.deb` while the installed
//! version stays as it is.

#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/pinned.rs"]
mod pinned;
#[path = "common/repo.rs"]
mod repo;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use e2e::Vm;
use fleet::Lan;
use repo::{SigningKey, StaticServer};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const PORT: u16 = 8080;
const KEYRING: &str = "/etc/apt/keyrings/istio-vm-archive-keyring.gpg";

fn installed(vm: &Vm) -> String {
    vm.ok("dpkg-query -W -f '${Version} ${Status}' istio-vm")
}

/// The version `apt-get install istio-vm` would install now.
fn candidate(vm: &Vm) -> String {
    vm.ok("apt-cache policy istio-vm | sed -n 's/^ *Candidate: //p'")
        .trim()
        .to_string()
}

/// `apt-get update` in the VM: (success, stdout + stderr).
fn update(vm: &Vm) -> (bool, String) {
    let out = vm.sh("apt-get update 2>&1");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn lines_with<'a>(text: &'a str, words: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| words.iter().any(|w| l.contains(w)))
        .collect()
}

/// Kept together because it is one scenario on one repository and one
/// machine: each step runs on the state the previous one left.
#[test]
fn apt_installs_upgrades_and_refuses_tampered_content_from_the_signed_repo() {
    let work = tempfile::Builder::new()
        .prefix("istio-vm-repo-apt-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dist = work.path().join("dist");
    let out = work.path().join("out");
    std::fs::create_dir_all(&dist).unwrap();
    let key = SigningKey::new("istio-vm-archive");

    // Version 1 published.
    std::fs::copy(
        fleet::istio_vm_deb_revision(1),
        dist.join(format!("istio-vm_{VERSION}-1_amd64.deb")),
    )
    .unwrap();
    key.build_repo(&dist, &out);
    let apt = out.join("apt");
    for f in [
        "dists/stable/Release",
        "dists/stable/InRelease",
        "dists/stable/Release.gpg",
        "dists/stable/main/binary-amd64/Packages",
        "dists/stable/main/binary-amd64/Packages.gz",
        "dists/stable/main/binary-amd64/Packages.xz",
        "dists/stable/main/binary-arm64/Packages",
        "dists/stable/main/binary-arm64/Packages.gz",
        "dists/stable/main/binary-arm64/Packages.xz",
    ] {
        assert!(apt.join(f).is_file(), "no apt/{f}");
    }
    let pool_v1 = apt.join(format!(
        "pool/main/i/istio-vm/istio-vm_{VERSION}-1_amd64.deb"
    ));
    assert!(pool_v1.is_file(), "{}", pool_v1.display());
    let keyring = out.join("istio-vm-archive-keyring.gpg");
    // The signatures verify with the exported key alone.
    for (sig, data) in [
        ("InRelease", None),
        ("Release.gpg", Some("dists/stable/Release")),
    ] {
        let mut cmd = std::process::Command::new("gpgv");
        cmd.arg("--keyring")
            .arg(&keyring)
            .arg(apt.join("dists/stable").join(sig));
        if let Some(d) = data {
            cmd.arg(apt.join(d));
        }
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "gpgv {sig}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // The LAN: a static server at 198.51.100.1, the VM at .21.
    let lan = Lan::new("rap", 1);
    let _server = StaticServer::start(&lan.controller, fleet::CONTROLLER_ADDR, PORT, &out, None);
    let mut vm = Vm::new("repoapt");
    let net = lan.nspawn_network(0);
    vm.set_network(&net.iter().map(String::as_str).collect::<Vec<_>>());
    // The LAN leads nowhere else: only this repository is configured.
    let _ = std::fs::remove_file(vm.path("/etc/apt/sources.list"));
    for e in std::fs::read_dir(vm.path("/etc/apt/sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_file(e.path());
    }
    e2e::put(&vm, &keyring, KEYRING, 0o644);
    std::fs::write(
        vm.path("/etc/apt/sources.list.d/istio-vm.sources"),
        format!(
            "Types: deb\nURIs: http://{}:{PORT}/apt\nSuites: stable\nComponents: main\n\
             Signed-By: {KEYRING}\n",
            fleet::CONTROLLER_ADDR
        ),
    )
    .unwrap();
    vm.boot();

    // 1. Install.
    let started = Instant::now();
    let (ok, log) = update(&vm);
    assert!(ok, "apt-get update:\n{log}");
    assert!(
        !log.contains("W:") && !log.contains("E:"),
        "apt-get update warned:\n{log}"
    );
    vm.ok("DEBIAN_FRONTEND=noninteractive apt-get install -y istio-vm");
    let install_time = started.elapsed();
    assert_eq!(installed(&vm), format!("{VERSION}-1 install ok installed"));
    vm.ok("istio-vm --version");

    // 2. Version 2 published beside it: the rebuild is incremental (the pool
    // file of version 1 is the same file), both versions are listed, and
    // `apt-get upgrade` moves to version 2.
    let v1_before = std::fs::metadata(&pool_v1).unwrap();
    std::fs::copy(
        fleet::istio_vm_deb_revision(2),
        dist.join(format!("istio-vm_{VERSION}-2_amd64.deb")),
    )
    .unwrap();
    let log = key.build_repo(&dist, &out);
    assert_eq!(
        log.matches("build-repo: added").count(),
        1,
        "a rebuild with one new package adds one file:\n{log}"
    );
    let v1_after = std::fs::metadata(&pool_v1).unwrap();
    assert_eq!(
        (v1_before.ino(), v1_before.mtime_nsec()),
        (v1_after.ino(), v1_after.mtime_nsec()),
        "the rebuild rewrote version 1 in the pool"
    );
    let packages =
        std::fs::read_to_string(apt.join("dists/stable/main/binary-amd64/Packages")).unwrap();
    for v in ["1", "2"] {
        assert!(
            packages.contains(&format!("Version: {VERSION}-{v}\n")),
            "{packages}"
        );
    }
    let started = Instant::now();
    let (ok, log) = update(&vm);
    assert!(ok, "apt-get update:\n{log}");
    let upgrade = vm.ok("DEBIAN_FRONTEND=noninteractive apt-get upgrade -y 2>&1");
    let upgrade_time = started.elapsed();
    assert!(upgrade.contains("1 upgraded"), "{upgrade}");
    assert_eq!(installed(&vm), format!("{VERSION}-2 install ok installed"));
    eprintln!(
        "repo: apt install from the repository {:.1} s (update + install), \
         upgrade {:.1} s (update + upgrade)",
        install_time.as_secs_f64(),
        upgrade_time.as_secs_f64()
    );
    let binary = vm.ok("sha256sum /usr/bin/istio-vm");

    // 3. Version 3 published, then tampered with in three ways; apt refuses
    // each and version 2 stays installed.
    std::fs::copy(
        fleet::istio_vm_deb_revision(3),
        dist.join(format!("istio-vm_{VERSION}-3_amd64.deb")),
    )
    .unwrap();
    key.build_repo(&dist, &out);
    let dists = apt.join("dists/stable");
    let saved = work.path().join("saved");
    fleet::run(&["cp", "-a", fleet::path_of(&dists), fleet::path_of(&saved)]);
    let restore = || {
        fleet::run(&["rm", "-rf", fleet::path_of(&dists)]);
        fleet::run(&["cp", "-a", fleet::path_of(&saved), fleet::path_of(&dists)]);
    };
    let untouched = |what: &str| {
        assert_eq!(
            installed(&vm),
            format!("{VERSION}-2 install ok installed"),
            "after {what}"
        );
        assert_eq!(vm.ok("sha256sum /usr/bin/istio-vm"), binary, "after {what}");
        vm.ok("dpkg --audit");
    };

    // 3a. Release signed by another key (a mirror that forged the index).
    let forger = SigningKey::new("forger");
    for (args, file) in [
        (&["--clearsign"][..], "InRelease"),
        (&["--armor", "--detach-sign"][..], "Release.gpg"),
    ] {
        let mut a = vec!["--yes", "--output"];
        let target = dists.join(file);
        a.push(fleet::path_of(&target));
        a.extend_from_slice(args);
        let release = dists.join("Release");
        a.push(fleet::path_of(&release));
        forger.gpg(&a);
    }
    // apt keeps the previous (good) indices and says so; its exit status
    // stays 0 unless asked (`--error-on=any`).
    let (_, log) = update(&vm);
    let refused = lines_with(&log, &["NO_PUBKEY", "not signed", "GPG error"]);
    assert!(
        log.contains("NO_PUBKEY") && log.contains("The repository is not updated"),
        "apt-get update accepted a forged signature:\n{log}"
    );
    assert_eq!(candidate(&vm), format!("{VERSION}-2"), "{log}");
    let strict = vm.sh("apt-get update --error-on=any 2>&1");
    assert!(!strict.status.success());
    eprintln!("repo: forged signature refused:\n{}", refused.join("\n"));
    let upgrade = vm.sh("DEBIAN_FRONTEND=noninteractive apt-get upgrade -y 2>&1");
    assert!(
        !String::from_utf8_lossy(&upgrade.stdout).contains("1 upgraded"),
        "upgraded from a forged index"
    );
    untouched("a forged signature");
    restore();

    // 3b. Packages changed (every compression of it) under a validly signed
    // Release: the index no longer matches its signed digests.
    for name in ["Packages", "Packages.gz", "Packages.xz"] {
        let p = dists.join("main/binary-amd64").join(name);
        if name == "Packages" {
            let text = std::fs::read_to_string(&p).unwrap();
            std::fs::write(
                &p,
                text.replacen("Priority: optional", "Priority: optionaL", 1),
            )
            .unwrap();
        } else {
            repo::flip_byte(&p);
        }
    }
    let (_, log) = update(&vm);
    let refused = lines_with(&log, &["Hash Sum mismatch", "unexpected size", "Hashes of"]);
    assert!(
        !refused.is_empty(),
        "apt-get update accepted a tampered Packages:\n{log}"
    );
    assert_eq!(candidate(&vm), format!("{VERSION}-2"), "{log}");
    eprintln!("repo: tampered Packages refused:\n{}", refused.join("\n"));
    untouched("a tampered Packages");
    restore();

    // 3c. The indices are good, the new .deb in the pool is not.
    let (ok, log) = update(&vm);
    assert!(ok, "apt-get update of the good repository:\n{log}");
    let pool_v3 = apt.join(format!(
        "pool/main/i/istio-vm/istio-vm_{VERSION}-3_amd64.deb"
    ));
    repo::flip_byte(&pool_v3);
    let upgrade = vm.sh("DEBIAN_FRONTEND=noninteractive apt-get upgrade -y 2>&1");
    let log = String::from_utf8_lossy(&upgrade.stdout).into_owned();
    assert!(
        !upgrade.status.success(),
        "upgraded to a tampered .deb:\n{log}"
    );
    let refused = lines_with(&log, &["Hash Sum mismatch", "Hashes of", "E: "]);
    assert!(
        log.contains("Hash Sum mismatch") || log.contains("unexpected size"),
        "{log}"
    );
    eprintln!("repo: tampered .deb refused:\n{}", refused.join("\n"));
    untouched("a tampered .deb");
    assert!(
        !Path::new(&vm.path(&format!(
            "/var/cache/apt/archives/istio-vm_{VERSION}-3_amd64.deb"
        )))
        .exists(),
        "apt kept the tampered .deb"
    );
}
