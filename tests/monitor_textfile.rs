//! `verify --textfile` and `verify --wait` against the fake istiod, in its
//! own network namespace behind a veth pair, per test: the metrics file is
//! what node_exporter's textfile collector and `promtool check metrics`
//! accept, with the values of the run; `--wait` against an ADS that keeps closing asks the CA once
//! and says on stderr what fails at each attempt.

#[path = "common/fake_istiod.rs"]
mod fake_istiod;
#[path = "common/verify_harness.rs"]
mod verify_harness;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use fake_istiod::{Behaviour, Seen};
use verify_harness::{Run, VmSpec, start_agent, verify, with_istiod};

const TEXTFILE: &str = "/var/lib/prometheus/node-exporter/istio_vm.prom";

/// `promtool check metrics` on `text`: its exit code and everything it said
/// (it prints lint warnings and still exits 0 for some, so both matter).
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-test-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The value of the one sample whose line starts with `series ` (name and
/// labels exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn status(text: &str, check: &str, st: &str) -> Option<f64> {
    sample(
        text,
        &format!("istio_vm_check_status{{check=\"{check}\",status=\"{st}\"}}"),
    )
}

fn scenario(
    b: Behaviour,
    agent: bool,
    args: &'static [&'static str],
) -> (Run, Seen, Option<(String, u32)>, String) {
    // istiod in its own namespace behind a veth pair; the VM's namespace
    // has Istio's capture rules.
    let ((run, text, token), seen) = with_istiod(VmSpec::default(), b, move |root| {
        std::fs::create_dir_all(root.file("/var/lib/prometheus/node-exporter")).unwrap();
        let _agent = agent.then(|| start_agent(root, &[]));
        let run = verify(root, args);
        let f = root.file(TEXTFILE);
        let text = std::fs::read_to_string(&f).ok().map(|t| {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
            (t, mode)
        });
        let token = std::fs::read_to_string(root.file("/var/lib/istio-vm/istio-token")).unwrap();
        // Nothing but the file itself is left in its directory.
        let names: Vec<String> = std::fs::read_dir(root.file("/var/lib/prometheus/node-exporter"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.len() <= 1, "temporary files left: {names:?}");
        (run, text, token)
    });
    (run, seen, text, token)
}

#[test]
fn healthy_run_writes_metrics_promtool_accepts() {
    let (run, _, file, token) = scenario(
        Behaviour::default(),
        true,
        &["--timeout", "2s", "--textfile", TEXTFILE],
    );
    assert_eq!(run.code, 0, "{}", run.json);
    let (text, mode) = file.expect("the textfile was written");
    assert_eq!(mode, 0o644);
    let (ok, said) = promtool_check(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    assert!(
        !text.contains(token.trim()),
        "the token leaked into the textfile"
    );
    assert_eq!(sample(&text, "istio_vm_verify_success"), Some(1.0));
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let last = sample(&text, "istio_vm_verify_last_run_timestamp_seconds").unwrap();
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    // Every check of the report is a state set with exactly one 1.
    let checks = run.json["checks"].as_array().unwrap();
    assert!(checks.len() > 10);
    for c in checks {
        let id = c["id"].as_str().unwrap();
        let mine = c["status"].as_str().unwrap();
        for st in ["pass", "warn", "fail", "skip"] {
            assert_eq!(
                status(&text, id, st),
                Some(if st == mine { 1.0 } else { 0.0 }),
                "{id} {st}"
            );
        }
        let d = sample(
            &text,
            &format!("istio_vm_check_duration_seconds{{check=\"{id}\"}}"),
        )
        .unwrap_or_else(|| panic!("no duration for {id}"));
        assert!((0.0..10.0).contains(&d), "{id}: {d}");
    }
    assert_eq!(status(&text, "xds.stream", "pass"), Some(1.0));
    // The harness's token expires in an hour; the fake CA's root in years.
    let tok = sample(&text, "istio_vm_token_expiry_timestamp_seconds").unwrap();
    assert!((tok - (now + 3600.0)).abs() < 120.0, "{tok}");
    assert!(sample(&text, "istio_vm_root_cert_expiry_timestamp_seconds").unwrap() > now);
    // No workload certificate was written by the agent: no series.
    assert!(!text.contains("istio_vm_workload_cert_expiry_timestamp_seconds"));
    let info = text
        .lines()
        .find(|l| l.starts_with("istio_vm_info{"))
        .unwrap();
    assert!(info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))));
    assert!(info.contains("namespace=\"vm-apps\""), "{info}");
    assert!(info.contains("service_account=\"ratings-sa\""), "{info}");
    assert!(info.ends_with("} 1"), "{info}");
}

#[test]
fn failing_run_flips_the_series_and_success() {
    // No agent: agent.ready and friends fail.
    let (run, _, file, _) = scenario(
        Behaviour::default(),
        false,
        &["--timeout", "1s", "--textfile", TEXTFILE],
    );
    assert_ne!(run.code, 0);
    let (text, _) = file.unwrap();
    let (ok, said) = promtool_check(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}");
    assert_eq!(sample(&text, "istio_vm_verify_success"), Some(0.0));
    for id in run.failing() {
        assert_eq!(status(&text, &id, "fail"), Some(1.0), "{id}");
        assert_eq!(status(&text, &id, "pass"), Some(0.0), "{id}");
    }
    assert!(run.failing().iter().any(|c| c == "agent.ready"));
}

#[test]
fn no_textfile_directory_is_a_notice_not_a_failure() {
    let (run, _, file, _) = scenario(
        Behaviour::default(),
        true,
        &[
            "--timeout",
            "2s",
            "--textfile",
            "/var/lib/node_exporter/textfile_collector/istio_vm.prom",
        ],
    );
    assert!(file.is_none());
    assert_eq!(run.code, 0, "{}", run.json);
    assert!(run.stderr.contains("metrics not written"), "{}", run.stderr);
}

#[test]
fn wait_against_a_closing_ads_asks_the_ca_once_and_reports_each_attempt() {
    let b = Behaviour {
        ads_close: true,
        ..Behaviour::default()
    };
    let (run, seen, _, _) = scenario(
        b,
        false,
        &["--timeout", "2s", "--skip-agent", "--wait", "6s"],
    );
    assert_ne!(run.code, 0);
    assert_eq!(run.failing(), ["xds.stream"], "{}", run.json);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("verify: attempt "))
        .collect();
    // 1 s, then 1-2 s, then 2-4 s between attempts: at least 3 in 6 s.
    assert!(lines.len() >= 3, "{}", run.stderr);
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.starts_with(&format!(
                "verify: attempt {}: 1 failing (xds.stream)",
                i + 1
            )),
            "{l}"
        );
    }
    assert!(
        lines.last().unwrap().ends_with("--wait is over"),
        "{}",
        run.stderr
    );
    assert_eq!(
        seen.ca_subjects.len(),
        1,
        "one CreateCertificate for {} attempts",
        lines.len()
    );
    assert!(seen.nodes.len() >= 3, "each attempt opened an ADS stream");
    assert!(run.detail("ca.token").contains("reused the certificate"));
}
