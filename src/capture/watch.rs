//! `capture watch`: keep the recorded rules in place while the sidecar
//! runs. On Debian, `nftables.service` start/restart/reload runs
//! `nft -f /etc/nftables.conf`, whose first line is `flush ruleset`; stop
//! runs `nft flush ruleset`; `firewall-cmd --reload` and `iptables -t nat
//! -F` do the same to Istio's chains. Each wipes the capture silently, and
//! the VM's traffic then leaves the mesh in plain text.
//!
//! Mechanism: a netlink socket subscribed to NFNLGRP_NFTABLES, the group
//! the kernel notifies of every nf_tables change (native nft, iptables-nft,
//! firewalld in either backend — on Debian and RHEL 8+ its iptables backend
//! is iptables-nft). The process sleeps in `recv` until netfilter changes:
//! no timer, no polling, so no wakeups while nothing changes. After a
//! change (and a short quiet period, as a reload is many messages) it
//! compares the kernel with the record ([`super::live::compare_with_kernel`])
//! and re-applies only when they differ and the sidecar is active. Its own
//! apply produces events too; the comparison after them finds a match, so
//! there is no loop. Two tools fighting over the ruleset are bounded: at
//! most [`BURST`] re-applies per [`WINDOW`]; beyond that the watcher says so
//! and waits for the window to pass.
//!
//! Limit: legacy x_tables has no change notification. With the
//! iptables-legacy backend, a flush of Istio's legacy chains is caught only
//! by the next nf_tables event or a restart of the capture unit
//! (`nft flush ruleset` and firewalld do not touch legacy tables).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::live::{self, Outcome};
use crate::cli::Backend;
use crate::config::Config;

/// NFNLGRP_NFTABLES (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// How long netfilter must be quiet before the comparison (a firewalld
/// reload is a burst of transactions).
const QUIET: Duration = Duration::from_millis(150);
/// At most this many re-applies per window.
pub const BURST: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);

fn subscribe() -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .context("opening a netlink socket for netfilter events")?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
    )
    .context("subscribing to nf_tables events (needs CAP_NET_ADMIN)")?;
    Ok(fd)
}

fn set_timeout(fd: &OwnedFd, t: Option<Duration>) -> Result<()> {
    let tv = t.map_or(TimeVal::new(0, 0), |d| {
        TimeVal::new(d.as_secs() as i64, i64::from(d.subsec_micros()))
    });
    setsockopt(fd, sockopt::ReceiveTimeout, &tv).context("setting the netlink timeout")
}

/// Wait for the next netfilter change (no timeout: a sleeping process),
/// then for `QUIET` without one. An overrun (ENOBUFS) counts as a change.
fn next_change(fd: &OwnedFd, buf: &mut [u8]) -> Result<()> {
    set_timeout(fd, None)?;
    match recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
        Ok(_) | Err(nix::errno::Errno::ENOBUFS) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e).context("reading netfilter events"),
    }
    set_timeout(fd, Some(QUIET))?;
    loop {
        match recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(_) | Err(nix::errno::Errno::ENOBUFS) | Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(()),
            Err(e) => return Err(e).context("reading netfilter events"),
        }
    }
}

/// The sidecar runs: `istio.service` is active where systemd runs;
/// elsewhere (a container, a test namespace) a `pilot-agent` process
/// exists.
pub fn sidecar_active() -> bool {
    if Path::new("/run/systemd/system").is_dir() {
        return std::process::Command::new("systemctl")
            .args(["is-active", "--quiet", crate::units::ISTIO_UNIT_NAME])
            .status()
            .is_ok_and(|s| s.success());
    }
    // `/proc/PID/stat`: "PID (comm) STATE …"; a zombie does not run.
    std::fs::read_dir("/proc").is_ok_and(|d| {
        d.flatten().any(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                s.split_once(" (")
                    .and_then(|(_, r)| r.rsplit_once(") "))
                    .is_some_and(|(comm, rest)| comm == "pilot-agent" && !rest.starts_with('Z'))
            })
        })
    })
}

/// Check once: when the kernel's Istio rules differ from the record and
/// the sidecar is active, apply. Returns what it did (None: nothing).
fn heal_once(root: &Path, config: &Config, requested: Backend) -> Result<Option<String>> {
    let records = crate::commands::capture::recorded(root);
    let Some(record) = records.first() else {
        return Ok(None);
    };
    let snap = live::Snapshot::take();
    let backend = match record {
        super::Rendered::Nftables { .. } => live::Resolved::Nftables,
        super::Rendered::Iptables { .. } => live::Resolved::Iptables(
            live::holding_variant(&snap)
                .or_else(|| match live::detect(requested, false, &snap) {
                    Ok(live::Resolved::Iptables(v)) => Some(v),
                    _ => None,
                })
                .unwrap_or(live::Variant::Nft),
        ),
    };
    let diff = live::compare_with_kernel(record, backend, &snap)?;
    if diff.is_empty() {
        return Ok(None);
    }
    if !sidecar_active() {
        tracing::info!(
            "capture rules differ from the record ({}), but the sidecar is not active: left as is",
            diff.summary()
        );
        return Ok(None);
    }
    crate::commands::capture::apply_on_root(root, config, requested)?;
    Ok(Some(diff.summary()))
}

/// Run until killed (the capture heal unit stops it with istio.service).
pub fn run(root: &Path, config: &Config, requested: Backend) -> Result<Outcome> {
    let fd = subscribe()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut heals: Vec<Instant> = Vec::new();
    // A change may have happened before the subscription.
    let mut pending = true;
    loop {
        if !pending {
            next_change(&fd, &mut buf)?;
        }
        pending = false;
        heals.retain(|t| t.elapsed() < WINDOW);
        if heals.len() >= BURST {
            let wait = WINDOW.saturating_sub(heals[0].elapsed());
            tracing::warn!(
                "capture rules were wiped {BURST} times within {}s: another tool keeps \
                 replacing the ruleset; next check in {}s",
                WINDOW.as_secs(),
                wait.as_secs()
            );
            // Sleep through the rest of the window, then look once more.
            std::thread::sleep(wait);
            pending = true;
            continue;
        }
        match heal_once(root, config, requested) {
            Ok(Some(what)) => {
                heals.push(Instant::now());
                tracing::warn!("capture rules re-applied (the kernel had: {what})");
                eprintln!("capture rules re-applied (the kernel had: {what})");
            }
            Ok(None) => {}
            Err(e) => tracing::error!("checking the capture rules: {e:#}"),
        }
    }
}
