//! packaging/cloud-init/user-data.yaml for real: a Debian with cloud-init
//! boots under systemd-nspawn with a NoCloud seed carrying that user-data and
//! comes up onboarded with no other command.
//!
//! The seed is the example user-data as shipped (with examples/bundle), with
//! one change: its `istio-vm verify --wait` line is left out, because no
//! istiod is reachable from the container and the sidecar is the stand-in of
//! scripts/e2e/build-stand-in-deb.sh (it serves the agent's local endpoints
//! but proxies nothing). verify itself is tested against a fake istiod in
//! tests/verify_fake.rs.
//!
//! The second example (user-data-repo.yaml, the recommended form) boots on
//! the test's LAN: apt installs both packages from the signed repository
//! scripts/build-repo.sh built (a static HTTP server at 198.51.100.1), and
//! istio-vm fetches the bundle from an HTTPS server there (a test CA through
//! SSL_CERT_FILE), checked against the digest in the user-data, which
//! carries no token.

#[path = "common/bundlegen.rs"]
#[allow(dead_code)]
mod bundlegen;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/pinned.rs"]
mod pinned;
#[path = "common/repo.rs"]
mod repo;

use std::time::Instant;

use e2e::Vm;
use istio_vm::layout;

/// How install's JSON result starts (pretty-printed, one document).
const INSTALL_RESULT: &str = "{\n  \"command\": \"install\"";
/// What a Debian cloud image has and the examples need: locales for
/// cloud-init's locale module (on by default), gnupg for the apt module's
/// keys (cloud-init makes a keyring of them with gpg). One tree for both
/// tests.
const CLOUD_IMAGE_PACKAGES: &str = "cloud-init,locales,gnupg";
const VERIFY_LINE: &str = "  - [istio-vm, verify, --wait, 120s, --output, json]\n";

#[test]
fn a_nocloud_seed_onboards_the_vm_at_first_boot() {
    let tree = fleet::variant_tree(CLOUD_IMAGE_PACKAGES);
    let mut vm = Vm::from_tree("cloudinit", &tree);

    let example = std::fs::read_to_string(e2e::repo().join("packaging/cloud-init/user-data.yaml"))
        .expect("reading packaging/cloud-init/user-data.yaml");
    assert!(
        example.contains(VERIFY_LINE),
        "the example user-data no longer runs `{}`: update this test",
        VERIFY_LINE.trim()
    );
    let user_data = example.replace(VERIFY_LINE, "");
    let seed = vm.path("/var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("user-data"), &user_data).unwrap();
    std::fs::write(
        seed.join("meta-data"),
        "instance-id: iid-istio-vm-fleet\nlocal-hostname: vm-cloud\n",
    )
    .unwrap();
    // The packages where the user-data expects them.
    e2e::put(
        &vm,
        &fleet::istio_vm_deb(),
        "/var/cache/istio-vm/istio-vm.deb",
        0o644,
    );
    let sidecar = e2e::stand_in_deb(vm.work_dir());
    e2e::put(
        &vm,
        &sidecar,
        "/var/cache/istio-vm/istio-sidecar.deb",
        0o644,
    );

    // Boot; the harness waits until systemd reports the boot finished
    // (cloud-final.service, which runs runcmd, is part of it) and fails on a
    // degraded system.
    let started = Instant::now();
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.boot())) {
        // The tree is still there: say what cloud-init did.
        let read = |p: &str| std::fs::read_to_string(vm.path(p)).unwrap_or_default();
        let warnings: Vec<String> = read("/var/log/cloud-init.log")
            .lines()
            .filter(|l| l.contains("WARNING") || l.contains("FAIL"))
            .map(String::from)
            .collect();
        eprintln!(
            "cloud-init-output.log:\n{}\ncloud-init.log warnings:\n{}",
            read("/var/log/cloud-init-output.log"),
            warnings.join("\n")
        );
        std::panic::resume_unwind(e);
    }
    let status = vm.ok("cloud-init status --wait --format json");
    eprintln!(
        "cloud-init: booted and onboarded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let status: serde_json::Value = serde_json::from_str(&status)
        .unwrap_or_else(|e| panic!("cloud-init status printed no JSON ({e}):\n{status}"));
    let log = vm.ok("cat /var/log/cloud-init-output.log");
    assert_eq!(status["status"], "done", "{status}\n{log}");
    assert_eq!(status["errors"], serde_json::json!([]), "{status}\n{log}");
    assert_eq!(status["datasource"], "nocloud", "{status}");

    // Both packages were installed by dpkg, from the seed's runcmd.
    let pkgs = vm.ok("dpkg-query -W -f '${Package} ${Status}\\n' istio-vm istio-sidecar");
    for p in ["istio-vm", "istio-sidecar"] {
        assert!(
            pkgs.contains(&format!("{p} install ok installed")),
            "{pkgs}\n{log}"
        );
    }
    // install ran and printed its JSON result into cloud-init's output log.
    let start = log
        .find(INSTALL_RESULT)
        .unwrap_or_else(|| panic!("no install result in cloud-init-output.log:\n{log}"));
    let result: serde_json::Value = serde_json::Deserializer::from_str(&log[start..])
        .into_iter()
        .next()
        .expect("a JSON document")
        .expect("install's JSON result");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["changed"], true, "{result}");

    // The bundle as write_files left it: the token root-only, written late.
    assert_eq!(
        vm.ok("stat -c '%U %G %a' /etc/istio-vm/bundle/istio-token")
            .trim(),
        "root root 600"
    );
    fleet::assert_onboarded(&vm, "203.0.113.10 istiod.istio-system.svc\n");
    // The token never reaches the console or the logs cloud-init keeps.
    let token = std::fs::read_to_string(e2e::repo().join("examples/bundle/istio-token")).unwrap();
    let token = token.trim();
    let logs = vm
        .ok("cat /var/log/cloud-init.log /var/log/cloud-init-output.log; journalctl -b --no-pager");
    assert!(!logs.contains(token), "the token appears in the VM's logs");
    assert!(
        !vm.console_tail(10_000).contains(token),
        "the token appears on the console"
    );
    let placed = vm.ok(&format!("cat {}", layout::TOKEN));
    assert_eq!(placed.trim(), token);

    // A second boot of the same instance does not run the per-instance
    // runcmd again, and the VM is still onboarded (units, tmpfiles token).
    vm.reboot();
    vm.ok("cloud-init status --wait");
    fleet::assert_onboarded(&vm, "203.0.113.10 istiod.istio-system.svc\n");
    let log = vm.ok("cat /var/log/cloud-init-output.log");
    assert_eq!(
        log.matches(INSTALL_RESULT).count(),
        1,
        "install ran again on the second boot:\n{log}"
    );
}

const REPO_EXAMPLE: &str = "packaging/cloud-init/user-data-repo.yaml";

/// `example` with `from` replaced by `to`; `from` must be in it.
#[track_caller]
fn subst(example: &str, from: &str, to: &str) -> String {
    assert!(
        example.contains(from),
        "{REPO_EXAMPLE} no longer holds `{from}`: update this test"
    );
    example.replace(from, to)
}

/// Kept together because it is one scenario on one booted machine: the
/// steps share its state, from the first boot to the fetched bundle.
#[test]
fn the_repo_example_installs_from_the_signed_repo_and_fetches_the_bundle_over_https() {
    let tree = fleet::variant_tree(CLOUD_IMAGE_PACKAGES);
    let lan = fleet::Lan::new("cir", 1);
    let work = tempfile::Builder::new()
        .prefix("istio-vm-ci-repo-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let w = work.path();

    // The signed repository with both packages, on the LAN over HTTP.
    let dist = w.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::copy(fleet::istio_vm_deb(), dist.join("istio-vm.deb")).unwrap();
    let sidecar = e2e::stand_in_deb(w);
    std::fs::rename(&sidecar, dist.join("istio-sidecar.deb")).unwrap();
    let key = repo::SigningKey::new("istio-vm-archive");
    let out = w.join("repo");
    key.build_repo(&dist, &out);
    let _repo_server =
        repo::StaticServer::start(&lan.controller, fleet::CONTROLLER_ADDR, 8080, &out, None);

    // The bundle as a .tar.gz on the LAN's HTTPS server.
    let bundle = bundlegen::BundleSpec::valid().write(&w.join("bundle"));
    let token = std::fs::read_to_string(bundle.join(bundlegen::TOKEN)).unwrap();
    let site = w.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let tarball = site.join("vm-1.tar.gz");
    fleet::run(&[
        "tar",
        "czf",
        fleet::path_of(&tarball),
        "-C",
        fleet::path_of(&bundle),
        ".",
    ]);
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&tarball).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (ca_pem, server_pem) = repo::test_ca(fleet::CONTROLLER_ADDR);
    std::fs::write(w.join("server.pem"), server_pem).unwrap();
    let _https = repo::StaticServer::start(
        &lan.controller,
        fleet::CONTROLLER_ADDR,
        8443,
        &site,
        Some(&w.join("server.pem")),
    );

    // The example with this LAN's URLs, the key and the digest.
    let example = std::fs::read_to_string(e2e::repo().join(REPO_EXAMPLE)).unwrap();
    let armored = std::fs::read_to_string(out.join("istio-vm-archive-keyring.asc")).unwrap();
    let indented: String = armored
        .trim_end()
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    let placeholder = "        -----BEGIN PGP PUBLIC KEY BLOCK-----\n        \
                       (paste istio-vm-archive-keyring.asc here)\n        \
                       -----END PGP PUBLIC KEY BLOCK-----\n";
    let mut user_data = subst(&example, placeholder, &indented);
    user_data = subst(
        &user_data,
        "https://packages.example.com/istio-vm/apt",
        &format!("http://{}:8080/apt", fleet::CONTROLLER_ADDR),
    );
    user_data = subst(
        &user_data,
        "https://bundles.example.com/istio-vm/ratings-vm.tar.gz",
        &format!("https://{}:8443/vm-1.tar.gz", fleet::CONTROLLER_ADDR),
    );
    user_data = subst(&user_data, "SHA256_OF_THE_TARBALL", &digest);
    // The test CA is no public one: install is told of it.
    user_data = subst(
        &user_data,
        "[istio-vm, install,",
        "[env, SSL_CERT_FILE=/usr/local/share/istio-vm-test/ca.pem, istio-vm, install,",
    );
    user_data = subst(&user_data, VERIFY_LINE, "");
    assert!(!user_data.contains(token.trim()));

    let mut vm = Vm::from_tree("cirepo", &tree);
    let net = lan.nspawn_network(0);
    vm.set_network(&net.iter().map(String::as_str).collect::<Vec<_>>());
    // The LAN leads nowhere else: the image's Debian sources are unreachable.
    let _ = std::fs::remove_file(vm.path("/etc/apt/sources.list"));
    let ca = w.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    e2e::put(&vm, &ca, "/usr/local/share/istio-vm-test/ca.pem", 0o644);
    let seed = vm.path("/var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("user-data"), &user_data).unwrap();
    std::fs::write(
        seed.join("meta-data"),
        "instance-id: iid-istio-vm-repo\nlocal-hostname: vm-repo\n",
    )
    .unwrap();

    let started = Instant::now();
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.boot())) {
        let read = |p: &str| std::fs::read_to_string(vm.path(p)).unwrap_or_default();
        eprintln!(
            "cloud-init-output.log:\n{}",
            read("/var/log/cloud-init-output.log")
        );
        std::panic::resume_unwind(e);
    }
    let status = vm.ok("cloud-init status --wait --format json");
    eprintln!(
        "cloud-init (repo + HTTPS bundle): booted and onboarded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let log = vm.ok("cat /var/log/cloud-init-output.log");
    assert_eq!(status["status"], "done", "{status}\n{log}");
    assert_eq!(status["errors"], serde_json::json!([]), "{status}\n{log}");

    // apt installed both from the repository, trusting its key only there.
    let list = vm.ok("cat /etc/apt/sources.list.d/istio-vm.list");
    assert!(
        list.contains("[signed-by=/etc/apt/cloud-init.gpg.d/istio-vm.gpg]"),
        "{list}"
    );
    let policy = vm.ok("apt-cache policy istio-vm istio-sidecar");
    assert!(
        policy
            .matches(&format!(
                "http://{}:8080/apt stable/main",
                fleet::CONTROLLER_ADDR
            ))
            .count()
            >= 2,
        "{policy}"
    );
    let pkgs = vm.ok("dpkg-query -W -f '${Package} ${Status}\\n' istio-vm istio-sidecar");
    assert_eq!(
        pkgs.matches("install ok installed").count(),
        2,
        "{pkgs}\n{log}"
    );
    let start = log
        .find(INSTALL_RESULT)
        .unwrap_or_else(|| panic!("no install result in cloud-init-output.log:\n{log}"));
    let result: serde_json::Value = serde_json::Deserializer::from_str(&log[start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    fleet::assert_onboarded(&vm, "203.0.113.10 istiod.istio-system.svc\n");
    assert_eq!(
        vm.ok(&format!("cat {}", layout::TOKEN)).trim(),
        token.trim(),
        "the placed token is the bundle's"
    );
    // The token is nowhere in what cloud-init keeps or logs.
    let kept = vm.sh(&format!(
        "grep -rlF -- '{}' /var/lib/cloud /var/log/cloud-init.log /var/log/cloud-init-output.log",
        token.trim()
    ));
    assert_eq!(
        kept.status.code(),
        Some(1),
        "the token is in: {}",
        String::from_utf8_lossy(&kept.stdout)
    );
}
