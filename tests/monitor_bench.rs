//! Measurements for scripts/bench/monitor.sh (ignored in normal runs; they
//! print figures, as the project's rules ask): the CreateCertificate calls
//! the fake istiod sees during a 30 s `verify --wait` against an ADS that
//! closes every stream (a fleet member that cannot get XDS), and the size of
//! the metrics textfile.
//!
//! `VERIFY_BENCH_BIN` selects the binary (the release build in the bench
//! script).

#[path = "common/fake_istiod.rs"]
mod fake_istiod;
#[path = "common/verify_harness.rs"]
mod verify_harness;

use std::path::PathBuf;

use fake_istiod::Behaviour;
use verify_harness::{VmSpec, verify_with, with_istiod};

fn bin() -> PathBuf {
    std::env::var_os("VERIFY_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_istio-vm")))
}

#[test]
#[ignore = "benchmark: run by scripts/bench/monitor.sh"]
fn bench_csrs_per_wait_against_a_closing_ads() {
    // istiod in its own namespace behind a veth pair, Istio's capture rules
    // in the VM's.
    let b = Behaviour {
        ads_close: true,
        ..Behaviour::default()
    };
    let ((attempts, elapsed, size), seen) = with_istiod(VmSpec::default(), b, |root| {
        std::fs::create_dir_all(root.file("/var/lib/prometheus/node-exporter")).unwrap();
        let run = verify_with(
            root,
            &bin(),
            &[],
            &[
                "--timeout",
                "2s",
                "--skip-agent",
                "--wait",
                "30s",
                "--textfile",
                "/var/lib/prometheus/node-exporter/istio_vm.prom",
            ],
        );
        assert_ne!(run.code, 0, "the ADS closes: xds.stream fails");
        let attempts = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("verify: attempt "))
            .count();
        let size = std::fs::metadata(root.file("/var/lib/prometheus/node-exporter/istio_vm.prom"))
            .unwrap()
            .len();
        (attempts, run.elapsed, size)
    });
    println!("BENCH monitor.wait_attempts {attempts}");
    println!("BENCH monitor.wait_ads_streams {}", seen.nodes.len());
    println!("BENCH monitor.wait_csrs {}", seen.ca_subjects.len());
    println!("BENCH monitor.wait_elapsed_ms {}", elapsed.as_millis());
    println!("BENCH monitor.textfile_bytes {size}");
}
