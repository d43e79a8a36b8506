//! Measurements for scripts/bench/verify.sh (ignored in normal runs; they
//! print figures and assert nothing about time, as the project's rules ask).
//!
//! `VERIFY_BENCH_BIN` selects the binary (the release build in the bench
//! script); every run happens in a private network namespace against the
//! fake istiod and the stand-in agent, through `/usr/bin/time -v`.

#[path = "common/fake_istiod.rs"]
mod fake_istiod;
#[path = "common/verify_harness.rs"]
mod verify_harness;

use std::path::PathBuf;

use fake_istiod::{Behaviour, FakeIstiod};
use verify_harness::{Run, VmRoot, VmSpec, in_netns, runtime, start_agent, verify_with};

fn bin() -> PathBuf {
    std::env::var_os("VERIFY_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_istio-vm")))
}

/// Wall milliseconds and peak RSS (KiB) from GNU time's `-v` report.
fn time_v(run: &Run) -> (u64, u64) {
    let mut wall = 0;
    let mut rss = 0;
    for l in run.stderr.lines() {
        let l = l.trim();
        if let Some(v) = l.strip_prefix("Maximum resident set size (kbytes): ") {
            rss = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = l.strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss): ") {
            // m:ss.cc or h:mm:ss
            let parts: Vec<f64> = v.split(':').filter_map(|p| p.parse().ok()).collect();
            let secs = parts.iter().fold(0.0, |acc, p| acc * 60.0 + p);
            wall = (secs * 1000.0).round() as u64;
        }
    }
    (wall, rss)
}

#[test]
#[ignore = "benchmark: run by scripts/bench/verify.sh"]
fn bench_healthy() {
    in_netns(|| {
        let rt = runtime();
        let fake = rt.block_on(FakeIstiod::start(
            "127.0.0.1:15012".parse().unwrap(),
            Behaviour::default(),
        ));
        let root = VmRoot::new(&VmSpec::default(), fake.root_pem());
        let _agent = start_agent(&root, &[]);
        let mut walls = Vec::new();
        let mut rss = 0;
        let mut last = None;
        for _ in 0..10 {
            let run = verify_with(&root, &bin(), &["/usr/bin/time", "-v"], &[]);
            assert_eq!(run.code, 0, "healthy verify must pass: {}", run.json);
            let (w, r) = time_v(&run);
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
    in_netns(|| {
        // SYNs to istiod vanish; the DNS proxy is silent too: both waits
        // must overlap.
        let st = std::process::Command::new("iptables")
            .args(["-A", "INPUT", "-p", "tcp", "--dport", "15012", "-j", "DROP"])
            .status()
            .unwrap();
        assert!(st.success());
        let root = VmRoot::new(&VmSpec::default(), &fake_istiod::TestCa::new("x").cert_pem);
        let _agent = start_agent(&root, &["--dns-silent"]);
        let run = verify_with(
            &root,
            &bin(),
            &["/usr/bin/time", "-v"],
            &["--timeout", "1s"],
        );
        assert_eq!(run.code, 1);
        let (w, rss) = time_v(&run);
        println!();
        println!("BENCH verify.unreachable_ms {w} (timeout 1000)");
        println!("BENCH verify.unreachable_peak_rss_kib {rss}");
    });
}
