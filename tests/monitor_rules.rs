//! The alerting rules people adopt (packaging/prometheus/istio-vm-alerts.yml)
//! pass Prometheus' own checker and their unit tests with input series, and
//! name only metrics `verify --textfile` writes.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool (Debian package prometheus; scripts/install-test-deps.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

#[test]
fn rules_pass_promtool_check() {
    let said = promtool(&["check", "rules", "istio-vm-alerts.yml"]);
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
    assert!(!said.to_lowercase().contains("warning"), "{said}");
}

#[test]
fn rules_pass_their_unit_tests() {
    let said = promtool(&["test", "rules", "istio-vm-alerts.test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn rules_use_only_the_published_metrics() {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus/istio-vm-alerts.yml"),
    )
    .unwrap();
    let published = [
        "istio_vm_verify_success",
        "istio_vm_verify_last_run_timestamp_seconds",
        "istio_vm_check_status",
        "istio_vm_check_duration_seconds",
        "istio_vm_workload_cert_expiry_timestamp_seconds",
        "istio_vm_root_cert_expiry_timestamp_seconds",
        "istio_vm_token_expiry_timestamp_seconds",
        "istio_vm_info",
    ];
    let mut used = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("istio_vm_") {
            assert!(
                published.contains(&word),
                "{word} is not a metric verify writes"
            );
            used += 1;
        }
    }
    assert!(used >= 6);
}
