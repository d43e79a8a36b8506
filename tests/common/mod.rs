//! Helpers shared by the integration tests: `mod common;` in a test file.
//! Each area may add its own `tests/common/<area>.rs` and declare it here.
#![allow(dead_code)]

pub mod bundlegen;
pub mod tls;

use std::path::Path;

/// The `istio-vm` binary built for this test run.
pub fn istio_vm() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("istio-vm").expect("istio-vm binary");
    // Keep the host's config and environment out of the tests.
    cmd.env_remove("ISTIO_VM_ROOT")
        .env_remove("ISTIO_VM_CONFIG")
        .env_remove("ISTIO_VM_OUTPUT")
        // Tests talk to loopback only, never through a proxy the CI host has.
        .env("NO_PROXY", "127.0.0.1,localhost,::1")
        .env("no_proxy", "127.0.0.1,localhost,::1");
    cmd
}

/// The example bundle shipped in the repository.
pub fn example_bundle() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bundle"))
}

/// Fails (never skips) when not root: CI runs the suite as root, so a test
/// that needs it must run there. `needs` says what root is for.
pub fn require_root(needs: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({needs}); CI runs it as root"
    );
}
