//! Measurements for scripts/bench/verify.sh (ignored in normal runs; they
//! print figures and assert nothing about time, as the project's rules ask).
//!
//! `VERIFY_BENCH_BIN` selects the binary (the release build in the bench
//! script); every run happens in the VM's network namespace behind Istio's
//! capture rules, against the fake istiod in its own namespace (a veth pair
//! away) and the stand-in agent, through `/usr/bin/time -v`.

#[path = "common/fake_istiod.rs"]
mod fake_istiod;
#[path = "common/verify_harness.rs"]
mod verify_harness;

use std::path::PathBuf;

use fake_istiod::Behaviour;
use verify_harness::{Run, VmRoot, VmSpec, Wire, start_agent, verify_with, with_istiod};

fn bin() -> PathBuf {
    std::env::var_os("VERIFY_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_istio-vm")))
}

/// Wall milliseconds and peak RSS (KiB) from GNU time's `-v` report in
/// `stderr`. A report that is missing or unreadable is an error, never a
/// figure of 0.
fn time_v(stderr: &str) -> Result<(u64, u64), String> {
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| format!("no `{name}` line from /usr/bin/time -v in:\n{stderr}"))
    };
    let rss_text = field("Maximum resident set size (kbytes): ")?;
    let rss: u64 = rss_text
        .parse()
        .map_err(|e| format!("peak RSS `{rss_text}`: {e}"))?;
    // m:ss.cc or h:mm:ss
    let wall_text = field("Elapsed (wall clock) time (h:mm:ss or m:ss): ")?;
    let mut secs = 0.0;
    for p in wall_text.split(':') {
        let v: f64 = p
            .parse()
            .map_err(|e| format!("wall time `{wall_text}`: {e}"))?;
        secs = secs * 60.0 + v;
    }
    if rss == 0 {
        return Err(format!("a peak RSS of 0 KiB is no measurement:\n{stderr}"));
    }
    Ok(((secs * 1000.0).round() as u64, rss))
}

fn measured(run: &Run) -> (u64, u64) {
    time_v(&run.stderr).unwrap_or_else(|e| panic!("GNU time: {e}"))
}

#[test]
fn time_v_reads_gnu_times_report_and_refuses_a_missing_one() {
    let report = "\tCommand being timed: \"istio-vm\"\n\
                  \tElapsed (wall clock) time (h:mm:ss or m:ss): 0:01.25\n\
                  \tMaximum resident set size (kbytes): 6712\n";
    assert_eq!(time_v(report), Ok((1250, 6712)));
    let hours = report.replace("0:01.25", "1:02:03");
    assert_eq!(time_v(&hours).unwrap().0, 3_723_000);
    // What verify alone prints when /usr/bin/time did not run.
    assert!(time_v("verify: 3 failing\n").is_err());
    assert!(time_v(&report.replace("6712", "")).is_err());
    assert!(time_v(&report.replace("0:01.25", "soon")).is_err());
    assert!(time_v(&report.replace("6712", "0")).is_err());
}

#[test]
#[ignore = "benchmark: run by scripts/bench/verify.sh"]
fn bench_healthy() {
    with_istiod(VmSpec::default(), Behaviour::default(), |root| {
        let _agent = start_agent(root, &[]);
        let mut walls = Vec::new();
        let mut rss = 0;
        let mut last = None;
        for _ in 0..10 {
            let run = verify_with(root, &bin(), &["/usr/bin/time", "-v"], &[]);
            assert_eq!(run.code, 0, "healthy verify must pass: {}", run.json);
            let (w, r) = measured(&run);
            walls.push(w);
            rss = rss.max(r);
            last = Some(run);
        }
        walls.sort_unstable();
        let steps: Vec<String> = last.unwrap().json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["elapsed_ms"].as_u64().unwrap_or(0) > 0)
            .map(|c| format!("{}={}", c["id"].as_str().unwrap(), c["elapsed_ms"]))
            .collect();
        // A fresh line: the test harness prints its own prefix before ours.
        println!();
        println!("BENCH verify.healthy_steps_ms {}", steps.join(" "));
        println!(
            "BENCH verify.healthy_ms median={} max={} (10 runs)",
            walls[walls.len() / 2],
            walls[walls.len() - 1]
        );
        println!("BENCH verify.healthy_peak_rss_kib {rss}");
    });
}

#[test]
#[ignore = "benchmark: run by scripts/bench/verify.sh"]
fn bench_unreachable() {
    // SYNs to istiod vanish at its machine's firewall; the DNS proxy is
    // silent too: both waits must overlap.
    let wire = Wire::new();
    Wire::run_in(&wire.istiod, || {
        let st = std::process::Command::new("iptables")
            .args(["-A", "INPUT", "-p", "tcp", "--dport", "15012", "-j", "DROP"])
            .status()
            .unwrap();
        assert!(st.success());
    });
    let root = VmRoot::new(
        &VmSpec::default().on_wire(),
        &fake_istiod::TestCa::new("x").cert_pem,
    );
    wire.on_vm(root, |root| {
        let _agent = start_agent(root, &["--dns-silent"]);
        let run = verify_with(root, &bin(), &["/usr/bin/time", "-v"], &["--timeout", "1s"]);
        assert_eq!(run.code, 1);
        let (w, rss) = measured(&run);
        println!();
        println!("BENCH verify.unreachable_ms {w} (timeout 1000)");
        println!("BENCH verify.unreachable_peak_rss_kib {rss}");
    });
}
