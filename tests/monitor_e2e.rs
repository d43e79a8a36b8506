//! Continuous verification on a booted Debian (scripts/e2e/monitor-tree.sh:
//! the e2e tree plus Debian's real prometheus-node-exporter and curl): after
//! `istio-vm install` with the stand-in sidecar, istio-vm-verify.timer runs
//! verify, node_exporter serves its `istio_vm_*` series on :9100, a stopped
//! sidecar flips them within a timer period (shortened through the config
//! key), and the journal carries each line's priority, the failing checks
//! at warning and nothing else.
//!
//! The example bundle's istiod (203.0.113.10) is unreachable from the
//! container's private network, so the network checks fail throughout: the
//! series follow the agent's checks, and `tcp.discovery` stays failed.

#[path = "common/e2e.rs"]
mod e2e;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::Vm;
use istio_vm::units;

const BUNDLE: &str = "/root/bundle";
const SIDECAR_DEB: &str = "/root/istio-sidecar.deb";
const INTERVAL_SECS: u64 = 10;

fn monitor_tree() -> PathBuf {
    e2e::require_prerequisites();
    let out = Command::new(e2e::repo().join("scripts/e2e/monitor-tree.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/e2e/monitor-tree.sh");
    assert!(out.status.success(), "scripts/e2e/monitor-tree.sh failed");
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    );
    assert!(
        p.join("usr/bin/prometheus-node-exporter").exists(),
        "{}",
        p.display()
    );
    p
}

fn prepare(tag: &str) -> Vm {
    let vm = Vm::from_tree(tag, &monitor_tree());
    e2e::put(
        &vm,
        Path::new(env!("CARGO_BIN_EXE_istio-vm")),
        units::ISTIO_VM_BIN,
        0o755,
    );
    let bundle = e2e::repo().join("examples/bundle");
    for e in std::fs::read_dir(&bundle).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mode = if name == "istio-token" { 0o600 } else { 0o644 };
        e2e::put(&vm, &e.path(), &format!("{BUNDLE}/{name}"), mode);
    }
    let deb = e2e::stand_in_deb(vm.work_dir());
    e2e::put(&vm, &deb, SIDECAR_DEB, 0o644);
    // The period, through the config key (never by editing units).
    let cfg = vm.path("/etc/istio-vm/config.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, format!("verify_interval = \"{INTERVAL_SECS}s\"\n")).unwrap();
    vm
}

/// `name{labels} value` lines of node_exporter's `istio_vm_*` series.
fn scrape(vm: &Vm) -> String {
    vm.ok("curl -sf http://127.0.0.1:9100/metrics | grep '^istio_vm_' || true")
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn status_of(text: &str, check: &str) -> Option<&'static str> {
    ["pass", "warn", "fail", "skip"].into_iter().find(|st| {
        value(
            text,
            &format!("istio_vm_check_status{{check=\"{check}\",status=\"{st}\"}}"),
        ) == Some(1.0)
    })
}

/// The journal of the verify unit, as JSON entries.
fn journal(vm: &Vm, extra: &str) -> Vec<serde_json::Value> {
    vm.ok(&format!(
        "journalctl --no-pager -o json -u istio-vm-verify.service {extra}"
    ))
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

fn message(e: &serde_json::Value) -> String {
    match &e["MESSAGE"] {
        serde_json::Value::String(s) => s.clone(),
        // journald stores non-UTF-8 messages as byte arrays.
        v => format!("{v}"),
    }
}

/// Polls `script`; on timeout panics with the timer's, verify's and
/// node_exporter's state.
fn wait(vm: &Vm, what: &str, limit: Duration, script: &str) {
    let deadline = Instant::now() + limit;
    while !vm.sh(script).status.success() {
        if Instant::now() > deadline {
            let diag = vm.sh("systemctl list-timers --all --no-pager; \
                 systemctl status --no-pager istio-vm-verify.timer istio-vm-verify.service \
                 prometheus-node-exporter 2>&1 | tail -n 60; \
                 journalctl --no-pager -n 60 -u istio-vm-verify -u prometheus-node-exporter; \
                 ls -la /var/lib/prometheus/node-exporter");
            panic!(
                "{what}: not so after {limit:?}\n{}",
                String::from_utf8_lossy(&diag.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Boots `prepare(tag)`, installs the stand-in sidecar and the bundle,
/// and waits until node_exporter serves a run that saw the agent ready.
fn onboarded(tag: &str) -> Vm {
    let mut vm = prepare(tag);
    vm.boot();
    vm.ok(&format!("dpkg -i {SIDECAR_DEB}"));
    let out = vm.ok(&format!("istio-vm install --bundle {BUNDLE} --output json"));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["ok"], true, "{r}");

    // Install enabled and started the timer, with this VM's interval.
    vm.ok("systemctl is-active -q istio-vm-verify.timer");
    let wanted = vm.ok("systemctl show -p WantedBy --value istio-vm-verify.timer");
    assert!(wanted.contains("timers.target"), "{wanted}");
    let timer = vm.ok("systemctl cat istio-vm-verify.timer");
    assert!(
        timer.contains(&format!("OnUnitActiveSec={INTERVAL_SECS}s")),
        "{timer}"
    );
    vm.ok("systemctl is-active -q prometheus-node-exporter");

    // The first run comes OnBootSec=1min after boot; the ones after it
    // every INTERVAL_SECS.
    wait(
        &vm,
        "node_exporter serves istio_vm_verify_success",
        Duration::from_secs(150),
        "curl -sf http://127.0.0.1:9100/metrics | grep -q '^istio_vm_verify_success '",
    );
    wait(
        &vm,
        "the agent is ready and a run saw it",
        Duration::from_secs(60),
        "curl -sf http://127.0.0.1:9100/metrics | \
         grep -qx 'istio_vm_check_status{check=\"agent.ready\",status=\"pass\"} 1'",
    );
    vm
}

#[test]
fn node_exporter_serves_verify_metrics_and_the_journal_has_priorities() {
    let mut vm = onboarded("mon");
    let m = scrape(&vm);
    // The right values: each agent check passes (the stand-in agent runs),
    // istiod is out of reach, the identity is the bundle's.
    for c in [
        "agent.service",
        "agent.ready",
        "agent.live",
        "files.cluster_env",
        "files.root_cert",
    ] {
        assert_eq!(status_of(&m, c), Some("pass"), "{c}:\n{m}");
    }
    assert_eq!(status_of(&m, "tcp.discovery"), Some("fail"), "{m}");
    assert_eq!(value(&m, "istio_vm_verify_success"), Some(0.0));
    let info = m.lines().find(|l| l.starts_with("istio_vm_info{")).unwrap();
    for want in [
        "istio_version=\"1.28.0~standin\"",
        "cluster_id=\"cluster1\"",
        "network=\"vm-network\"",
        "namespace=\"vm-apps\"",
        "service_account=\"ratings-sa\"",
    ] {
        assert!(info.contains(want), "{want} in {info}");
    }
    let token = std::fs::read_to_string(vm.path("/var/lib/istio-vm/istio-token")).unwrap();
    let exp = istio_vm::bundle::token::Claims::decode(token.trim().as_bytes())
        .unwrap()
        .exp
        .unwrap();
    assert_eq!(
        value(&m, "istio_vm_token_expiry_timestamp_seconds"),
        Some(exp as f64)
    );
    assert!(!m.contains(token.trim()));
    let size = vm.ok("stat -c '%s %a %U' /var/lib/prometheus/node-exporter/istio_vm.prom");
    eprintln!("MEASURE textfile size, mode, owner: {}", size.trim());
    assert!(size.trim().ends_with(" 644 root"), "{size}");

    // CPU time of the timer's command on an onboarded VM (the container
    // may have no CPU controller for CPUUsageNSec): timed by bash.
    let cpu = vm.ok(
        "TIMEFORMAT='%U user %S sys %R wall'; { time istio-vm verify --textfile \
         /var/lib/prometheus/node-exporter/istio_vm.prom --output json >/dev/null 2>&1 || true; } 2>&1",
    );
    eprintln!(
        "MEASURE CPU time of the timer's command: {} (debug build)",
        cpu.trim()
    );

    // Stopping the sidecar flips its checks within a timer period.
    let stopped = Instant::now();
    vm.ok("systemctl stop istio");
    let ready_fail = "istio_vm_check_status{check=\"agent.ready\",status=\"fail\"} 1";
    let service_fail = "istio_vm_check_status{check=\"agent.service\",status=\"fail\"} 1";
    loop {
        let m = scrape(&vm);
        if m.lines().any(|l| l == ready_fail) && m.lines().any(|l| l == service_fail) {
            break;
        }
        // One period, its randomized delay (a fifth) and a run (the
        // network checks wait out their 3 s timeouts).
        assert!(
            stopped.elapsed() < Duration::from_secs(INTERVAL_SECS * 2 + 10),
            "no flip after {:?}:\n{m}",
            stopped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "MEASURE flip latency after `systemctl stop istio`: {:.1?} (interval {INTERVAL_SECS}s)",
        stopped.elapsed()
    );

    // Journal: a run after the flip has logged its failing checks.
    let runs_after = |vm: &Vm| {
        journal(vm, "-p warning")
            .iter()
            .any(|e| message(e).starts_with("check agent.ready failed: "))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runs_after(&vm) {
        assert!(Instant::now() < deadline, "no warning for agent.ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `-p warning` shows the failing checks, one line each naming its id,
    // and nothing else.
    let warnings = journal(&vm, "-p warning");
    assert!(!warnings.is_empty());
    for e in &warnings {
        let msg = message(e);
        assert_eq!(e["PRIORITY"], "4", "{e}");
        assert!(
            msg.starts_with("check ") && msg.contains(" failed: "),
            "{msg}"
        );
        let id = msg["check ".len()..].split(' ').next().unwrap();
        assert!(id.contains('.'), "{msg}");
    }
    // Every line the unit's process wrote has a priority journald took
    // from its prefix: no `<N>` left in a message.
    let all = journal(&vm, "");
    let own: Vec<&serde_json::Value> = all.iter().filter(|e| e["_COMM"] == "istio-vm").collect();
    assert!(!own.is_empty());
    for e in &own {
        let msg = message(e);
        assert!(!msg.starts_with('<'), "unparsed prefix: {msg}");
        let p: u8 = e["PRIORITY"].as_str().unwrap().parse().unwrap();
        assert!(p == 4 || p == 5 || p == 6, "{e}");
        if p == 4 {
            assert!(msg.starts_with("check "), "{msg}");
        }
    }
    // The JSON report (stdout) lands at info.
    assert!(
        own.iter()
            .any(|e| message(e).contains("\"command\": \"verify\"") && e["PRIORITY"] == "6")
    );

    // Measurements: CPU time of one run, the unit's exposure.
    let cpu = vm.ok("systemctl show -p CPUUsageNSec --value istio-vm-verify.service");
    eprintln!(
        "MEASURE CPU time of the last timer run: {} ns (systemd; debug build)",
        cpu.trim()
    );
    let sec = vm.sh("systemd-analyze security --no-pager istio-vm-verify.service 2>&1 | tail -n 1");
    eprintln!(
        "MEASURE systemd-analyze security: {}",
        String::from_utf8_lossy(&sec.stdout).trim()
    );

    // Uninstall removes the timer and its files.
    vm.ok("istio-vm uninstall --output json");
    let st = vm.sh("systemctl is-active istio-vm-verify.timer");
    assert!(!st.status.success(), "timer still active");
    // A copied binary: the package's units were placed under /etc, and the
    // timer enabled with `systemctl enable`.
    for p in [
        "/etc/systemd/system/istio-vm-verify.timer",
        "/etc/systemd/system/istio-vm-verify.service",
        units::VERIFY_TIMER_DROPIN,
        "/etc/systemd/system/timers.target.wants/istio-vm-verify.timer",
    ] {
        assert!(!vm.path(p).exists(), "{p} left behind");
    }
    vm.shutdown();
}

/// A firewall reload that flushes the tables (`iptables -t nat -F -X`, as
/// Debian's nftables.service or firewalld do to their rules) takes the
/// capture away; the `capture.rules` check
/// (capture's side of #11) sees it and its series flips within a period.
#[test]
fn flushed_capture_rules_flip_within_a_period() {
    let mut vm = onboarded("monflush");
    let pass = "istio_vm_check_status{check=\"capture.rules\",status=\"pass\"} 1";
    let fail = "istio_vm_check_status{check=\"capture.rules\",status=\"fail\"} 1";
    assert!(scrape(&vm).lines().any(|l| l == pass), "{}", scrape(&vm));
    // The heal unit (`capture watch`) would put the rules back at once:
    // this is about what verify sees when nothing does.
    vm.ok("systemctl stop istio-vm-capture-heal.service");
    let flushed = Instant::now();
    vm.ok("iptables -t nat -F && iptables -t nat -X");
    loop {
        let m = scrape(&vm);
        if m.lines().any(|l| l == fail) {
            break;
        }
        assert!(
            flushed.elapsed() < Duration::from_secs(INTERVAL_SECS * 2 + 10),
            "no flip after {:?}:\n{m}",
            flushed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "MEASURE flip latency after flushing the nat table: {:.1?} (interval {INTERVAL_SECS}s)",
        flushed.elapsed()
    );
    vm.shutdown();
}

/// An image baked with `install --root` comes up with the timer running.
#[test]
fn an_image_baked_with_root_starts_the_timer_at_first_boot() {
    let mut vm = prepare("monbake");
    let root = vm.root();
    let out = Command::new(env!("CARGO_BIN_EXE_istio-vm"))
        .arg("--root")
        .arg(&root)
        .args(["install", "--bundle"])
        .arg(vm.path(BUNDLE))
        .args(["--output", "json"])
        .env_remove("ISTIO_VM_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    vm.boot();
    vm.ok("systemctl is-active -q istio-vm-verify.timer");
    let timer = vm.ok("systemctl cat istio-vm-verify.timer");
    assert!(
        timer.contains(&format!("OnUnitActiveSec={INTERVAL_SECS}s")),
        "{timer}"
    );
    vm.shutdown();
}
