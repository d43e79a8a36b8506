//! `capture.rules`: are Istio's capture rules in this host's kernel (this
//! network namespace, every backend: iptables-nft, iptables-legacy, native
//! nft) exactly the set istio-vm recorded under
//! `/var/lib/istio-vm/capture/`? Under `--root`, the root's record is
//! compared with this host's kernel, as verify probes the network from
//! this host too. The comparison is capture's own
//! ([`crate::capture::live::compare_with_kernel`]), the one `capture apply`
//! reads back with.

use std::path::Path;

use crate::capture::{Rendered, live};
use crate::report::Check;

const ID: &str = "capture.rules";

const HINT: &str = "the usual causes: an nftables.service start, restart or reload (it runs \
     `flush ruleset`), `firewall-cmd --reload` with firewalld's iptables backend, an admin's \
     `iptables -t nat -F`, or another tool's ISTIO_* chains. Until fixed, the VM's traffic \
     bypasses the sidecar in plain text. Fix: `istio-vm capture apply` (or `systemctl restart \
     istio-vm-capture.service`); `istio-vm capture status` shows the difference";

pub fn check(root: &Path) -> Check {
    let records = crate::commands::capture::recorded(root);
    let Some(record) = records.first() else {
        return super::skip(
            ID,
            "capture is off: no record under /var/lib/istio-vm/capture/ (installed with \
             --no-capture, or not installed)",
            "install without --no-capture to have istio-vm apply and check the capture rules",
        );
    };
    if !nix::unistd::geteuid().is_root() {
        return super::skip(
            ID,
            "reading the kernel's rules needs root",
            "run verify as root to compare the live capture rules with the record",
        );
    }
    let snap = live::Snapshot::take();
    let backend = match record {
        Rendered::Nftables { .. } => live::Resolved::Nftables,
        Rendered::Iptables { .. } => live::Resolved::Iptables(
            live::holding_variant(&snap)
                .or_else(
                    || match live::detect(crate::cli::Backend::Iptables, false, &snap) {
                        Ok(live::Resolved::Iptables(v)) => Some(v),
                        _ => None,
                    },
                )
                .unwrap_or(live::Variant::Nft),
        ),
    };
    match live::compare_with_kernel(record, backend, &snap) {
        Ok(d) if d.is_empty() => super::pass(
            ID,
            format!(
                "the kernel's Istio rules ({}) equal the record",
                backend.name()
            ),
        ),
        Ok(d) => super::fail(
            ID,
            format!(
                "the kernel's Istio rules ({}) differ from the record: {}",
                backend.name(),
                d.summary()
            ),
            HINT,
        ),
        Err(e) => super::fail(ID, format!("reading the kernel's rules: {e:#}"), HINT),
    }
}
