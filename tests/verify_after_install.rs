//! The whole path a user takes: `istio-vm install` places a bundle (made by
//! the bundle generator, with the fake istiod's root) under a root, then
//! `istio-vm verify` proves it reaches the fake istiod and the stand-in
//! agent, with istiod on the far side of a veth pair and the recorded
//! capture rules applied in the VM's network namespace.

mod common;
#[path = "common/fake_istiod.rs"]
mod fake_istiod;
#[path = "common/verify_harness.rs"]
mod verify_harness;

use common::bundlegen::BundleSpec;
use fake_istiod::Behaviour;
use verify_harness::{ISTIOD_IP, VmRoot, Wire, apply_record, start_agent, verify};

#[test]
fn verify_passes_on_what_install_placed() {
    // istiod on the far side of a veth pair, in its own namespace; the VM's
    // namespace gets the capture rules install recorded, as the capture
    // unit applies them on a VM.
    let wire = Wire::new();
    let rt = wire.istiod_runtime();
    let ca = std::sync::Arc::new(fake_istiod::TestCa::new("cluster.local"));
    let fake = Wire::start_istiod(&rt, 15012, Behaviour::default(), ca);
    let bundle = tempfile::tempdir().unwrap();
    BundleSpec::valid()
        .hosts(&format!("{ISTIOD_IP} istiod.istio-system.svc\n"))
        .file("root-cert.pem", fake.root_pem())
        .write(bundle.path());
    let vm = VmRoot {
        dir: tempfile::tempdir().unwrap(),
    };
    common::istio_vm()
        .args(["install", "--no-start", "--bundle"])
        .arg(bundle.path())
        .arg("--root")
        .arg(vm.path())
        .assert()
        .success();
    // The resolver inside the namespace: nothing answers, nothing leaves.
    std::fs::write(vm.file("/etc/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let (before, after, flushed) = Wire::run_in(&wire.vm, move || {
        let _agent = start_agent(&vm, &[]);
        // An install under --root records the capture rules but applies
        // none: capture.rules compares that record with this namespace's
        // kernel and must say they are missing.
        let before = verify(&vm, &["--timeout", "2s"]);
        // Then the recorded rules, and verify's own traffic goes through them.
        apply_record(&vm);
        let after = verify(&vm, &["--timeout", "2s"]);
        // What nftables.service's restart or reload does to them.
        let st = std::process::Command::new("nft")
            .args(["flush", "ruleset"])
            .status()
            .expect("nft");
        assert!(st.success());
        let flushed = verify(&vm, &["--timeout", "2s"]);
        (before, after, flushed)
    });
    assert_eq!(
        before.failing(),
        vec!["capture.rules".to_string()],
        "{}",
        before.json
    );
    assert_eq!(after.failing(), Vec::<String>::new(), "{}", after.json);
    after.expect("capture.rules", "pass", "");
    for id in [
        "dns.discovery",
        "tcp.discovery",
        "tls.handshake",
        "ca.token",
        "xds.stream",
        "agent.ready",
    ] {
        assert_eq!(after.status(id), "pass", "{id}: {}", after.check(id));
    }
    assert!(
        after.detail("tcp.discovery").contains("as istio-proxy"),
        "{}",
        after.detail("tcp.discovery")
    );
    // Flushed: istiod is still reached (nothing redirects now), and
    // capture.rules says what is gone and why that happens.
    assert_eq!(
        flushed.failing(),
        vec!["capture.rules".to_string()],
        "{}",
        flushed.json
    );
    flushed.expect("capture.rules", "fail", "flush ruleset");
    assert!(
        flushed.detail("capture.rules").contains("missing"),
        "{}",
        flushed.detail("capture.rules")
    );
    let seen = fake.seen();
    assert_eq!(
        seen.ca_subjects,
        vec!["system:serviceaccount:vm-apps:ratings-sa"; 3]
    );
    assert!(seen.nodes[0].1.get("AUTO_REGISTER_GROUP").is_none());
}
