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

#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/pinned.rs"]
mod pinned;

use std::time::Instant;

use e2e::Vm;
use istio_vm::layout;

/// How install's JSON result starts (pretty-printed, one document).
const INSTALL_RESULT: &str = "{\n  \"command\": \"install\"";
const VERIFY_LINE: &str = "  - [istio-vm, verify, --wait, 120s, --output, json]\n";

#[test]
fn a_nocloud_seed_onboards_the_vm_at_first_boot() {
    // locales: cloud-init's locale module (on by default) needs it, as a
    // Debian cloud image has it.
    let tree = fleet::variant_tree("cloud-init,locales");
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
