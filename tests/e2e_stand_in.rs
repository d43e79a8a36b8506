//! The harness and the stand-in `istio-sidecar` package on a booted Debian,
//! without istio-vm: what Istio's own package does, which the other e2e tests
//! then change.

#[path = "common/e2e.rs"]
mod e2e;

use std::time::Duration;

use e2e::Vm;

/// The owner of the running stand-in agent process is istio-proxy.
const AGENT_USER: &str = "for d in /proc/[0-9]*; do \
    [ \"$(cat $d/comm 2>/dev/null)\" = stand-in-agent ] && u=$(stat -c %U $d); done; \
    [ \"$u\" = istio-proxy ]";

#[test]
fn stand_in_package_behaves_like_istios_and_fails_open_on_a_crash() {
    let mut vm = Vm::new("standin");
    let deb = e2e::stand_in_deb(vm.work_dir());
    e2e::put(&vm, &deb, "/root/istio-sidecar.deb", 0o644);
    vm.boot();

    // The container has its own netfilter, not this machine's.
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let vm_ns = std::fs::read_link(format!("/proc/{}/ns/net", vm.init_pid())).unwrap();
    assert_ne!(
        host_ns, vm_ns,
        "the container shares this machine's network"
    );

    vm.ok("dpkg -i /root/istio-sidecar.deb");
    // postinst, as Istio's: a system user with its own group, home /var/lib/istio.
    let pw = vm.ok("getent passwd istio-proxy");
    let f: Vec<&str> = pw.trim().split(':').collect();
    assert!(
        f[2].parse::<u32>().unwrap() < 1000,
        "not a system uid: {pw}"
    );
    assert_eq!(f[5], "/var/lib/istio");
    assert_eq!(vm.ok("readlink /etc/istio").trim(), "/var/lib/istio");
    // Not enabled, as Istio's package does not enable it.
    assert_eq!(vm.sh("systemctl is-enabled istio").stdout, b"disabled\n");

    vm.ok("systemctl start istio");
    // Without ISTIO_CUSTOM_IP_TABLES the start script puts in rules of its own.
    vm.wait_until(
        "the start script's rules are in",
        Duration::from_secs(20),
        "iptables-save -t nat | grep -q 'istio-start.sh stand-in'",
    );
    // The agent runs as istio-proxy (sudo -E -u istio-proxy).
    vm.wait_until(
        "the stand-in agent runs as istio-proxy",
        Duration::from_secs(20),
        AGENT_USER,
    );

    // A crash of the agent: systemd runs `istio-start.sh clean` (ExecStopPost) and waits
    // RestartSec=10 before the restart. During that gap there are no rules.
    vm.kill_process("stand-in-agent");
    vm.wait_until(
        "istio.service waits to restart",
        Duration::from_secs(5),
        "[ \"$(systemctl show -p SubState --value istio)\" = auto-restart ]",
    );
    let nat = vm.ok("iptables-save -t nat");
    assert!(
        !nat.contains("ISTIO_"),
        "rules during the restart gap:\n{nat}"
    );
    // ... and after the restart they are back.
    vm.wait_until(
        "istio.service restarted with its rules",
        Duration::from_secs(20),
        "systemctl is-active -q istio && iptables-save -t nat | grep -q 'istio-start.sh stand-in'",
    );
}
