//! The whole path a user takes: `istio-vm install` places a bundle (made by
//! the bundle generator, with the fake istiod's root) under a root, then
//! `istio-vm verify` proves it reaches the fake istiod and the stand-in
//! agent, in a private network namespace.

mod common;
#[path = "common/fake_istiod.rs"]
mod fake_istiod;
#[path = "common/verify_harness.rs"]
mod verify_harness;

use common::bundlegen::BundleSpec;
use fake_istiod::{Behaviour, FakeIstiod};
use verify_harness::{VmRoot, in_netns, runtime, start_agent, verify};

#[test]
fn verify_passes_on_what_install_placed() {
    in_netns(|| {
        let rt = runtime();
        let fake = rt.block_on(FakeIstiod::start(
            "127.0.0.1:15012".parse().unwrap(),
            Behaviour::default(),
        ));
        let bundle = tempfile::tempdir().unwrap();
        BundleSpec::valid()
            .hosts("127.0.0.1 istiod.istio-system.svc\n")
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
        let _agent = start_agent(&vm, &[]);
        let run = verify(&vm, &["--timeout", "2s"]);
        // An install under --root records the capture rules but applies
        // none: capture.rules compares that record with this namespace's
        // kernel and must say they are missing.
        assert_eq!(
            run.failing(),
            vec!["capture.rules".to_string()],
            "{}",
            run.json
        );
        assert_eq!(run.status("capture.rules"), "fail");
        for id in [
            "dns.discovery",
            "tls.handshake",
            "ca.token",
            "xds.stream",
            "agent.ready",
        ] {
            assert_eq!(run.status(id), "pass", "{id}: {}", run.check(id));
        }
        let seen = fake.seen();
        assert_eq!(
            seen.ca_subjects,
            vec!["system:serviceaccount:vm-apps:ratings-sa"]
        );
        assert!(seen.nodes[0].1.get("AUTO_REGISTER_GROUP").is_none());
    });
}
