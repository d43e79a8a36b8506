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
//! is iptables-nft). The process sleeps in `poll` until netfilter changes:
//! no timer, no polling, so no wakeups while nothing changes. After a
//! change (and a short quiet period, as a reload is many messages) it
//! compares the kernel with the record ([`super::live::compare_with_kernel`])
//! and re-applies only when they differ and the sidecar is active. Its own
//! apply produces events too; the comparison after them finds a match, so
//! there is no loop. Two tools fighting over the ruleset are bounded: at
//! most [`BURST`] re-applies per [`WINDOW`]; beyond that the watcher says so
//! and waits for the window to pass.
//!
//! Legacy x_tables have no change notification (no netlink group, no
//! event; the kernel's only trace of a table replace is an audit record,
//! and only where auditing is on). What every legacy change has in common
//! is a run of the legacy iptables binary (`iptables-legacy`,
//! `iptables-legacy-restore`, firewalld's legacy backend, Docker: on Debian
//! all one file, `xtables-legacy-multi`). While legacy tables are loaded in
//! this network namespace (else there is nothing to flush), the watcher
//! puts an inotify watch on that file: exec opens it, and the last close comes when the
//! process exits (`IN_CLOSE_NOWRITE`), after its change is committed. So a
//! legacy change wakes the watcher once, when it is complete; nothing
//! wakes it otherwise. Its own legacy runs (the check's `*-save`, the
//! re-apply) wake it too: they are counted and discounted, or each check
//! would trigger the next. Limit: a program changing x_tables without that
//! binary (its own copy in a container sharing the host's network
//! namespace, or libiptc linked in) is seen only at the next nf_tables
//! event or legacy run.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};

use super::live::{self, Outcome};
use crate::cli::Backend;
use crate::config::Config;

/// NFNLGRP_NFTABLES (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// How long netfilter must be quiet before the comparison (a firewalld
/// reload is a burst of transactions).
const QUIET: Duration = Duration::from_millis(150);
/// The longest a check waits for netfilter to go quiet.
const SETTLE: Duration = Duration::from_millis(500);
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

/// What woke the watcher.
#[derive(Debug, Default, Clone, Copy)]
struct Woke {
    /// An nf_tables change (or a lost event: the socket overran).
    nft: bool,
    /// Runs of a legacy binary that ended.
    legacy: usize,
}

/// The two event sources: nf_tables changes, and ends of legacy iptables
/// runs (none when the legacy binaries are not installed).
struct Sources {
    nl: OwnedFd,
    ino: Option<Inotify>,
    files: &'static [std::path::PathBuf],
}

const LEGACY_MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_NOWRITE
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

/// Legacy x_tables are in use in this network namespace (a table is
/// loaded): only then can Istio's rules be there, and only then are the
/// legacy binaries watched.
fn legacy_in_use() -> bool {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|t| !t.trim().is_empty()))
}

impl Sources {
    fn open() -> Result<Sources> {
        let nl = subscribe()?;
        let files = super::kernel::watched_legacy_binaries();
        let mut s = Sources {
            nl,
            ino: None,
            files,
        };
        s.legacy(legacy_in_use());
        Ok(s)
    }

    /// Watch the legacy binaries, or stop watching them.
    fn legacy(&mut self, on: bool) {
        if on == self.ino.is_some() || self.files.is_empty() {
            return;
        }
        self.ino = None;
        if !on {
            return;
        }
        match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
            Ok(i) => {
                self.ino = Some(i);
                self.rewatch();
            }
            Err(e) => tracing::warn!(
                "cannot watch the legacy iptables binaries ({e}): legacy x_tables changes are \
                 seen only with the next nf_tables change"
            ),
        }
    }

    /// (Re)add the watches: a package upgrade replaces the file.
    fn rewatch(&self) {
        let Some(ino) = &self.ino else {
            return;
        };
        for f in self.files {
            if let Err(e) = ino.add_watch(f.as_path(), LEGACY_MASK) {
                tracing::debug!("watching {}: {e}", f.display());
            }
        }
    }

    /// Wait up to `timeout` (None: for ever) for events, and drain them.
    fn wait(&self, timeout: Option<Duration>, buf: &mut [u8]) -> Result<Woke> {
        let t = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = vec![PollFd::new(self.nl.as_fd(), PollFlags::POLLIN)];
        if let Some(i) = &self.ino {
            fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, t) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for netfilter events"),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty())
        };
        let (nl_ready, ino_ready) = (ready(0), ready(1));
        let mut woke = Woke::default();
        if nl_ready {
            woke.nft = true;
            self.drain_netlink(buf)?;
        }
        if ino_ready {
            woke.legacy = self.drain_inotify();
        }
        Ok(woke)
    }

    fn drain_netlink(&self, buf: &mut [u8]) -> Result<()> {
        loop {
            match recv(self.nl.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(_) | Err(nix::errno::Errno::ENOBUFS) | Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e).context("reading netfilter events"),
            }
        }
    }

    /// Ends of legacy runs among the queued inotify events.
    fn drain_inotify(&self) -> usize {
        let Some(ino) = &self.ino else {
            return 0;
        };
        let mut ends = 0;
        let mut moved = false;
        while let Ok(events) = ino.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                if e.mask.contains(AddWatchFlags::IN_CLOSE_NOWRITE) {
                    ends += 1;
                }
                moved |= e.mask.intersects(
                    AddWatchFlags::IN_ATTRIB
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF
                        | AddWatchFlags::IN_IGNORED,
                );
            }
        }
        if moved {
            self.rewatch();
        }
        ends
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
fn heal_once(
    root: &Path,
    config: &Config,
    requested: Backend,
    woke: Woke,
) -> Result<Option<String>> {
    let records = crate::commands::capture::recorded(root);
    let Some(record) = records.first() else {
        return Ok(None);
    };
    // A legacy iptables run cannot touch native nft tables.
    if !woke.nft && matches!(record, super::Rendered::Nftables { .. }) {
        return Ok(None);
    }
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
    let mut src = Sources::open()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut heals: Vec<Instant> = Vec::new();
    // A change may have happened before the subscription.
    let mut pending = true;
    loop {
        let mut woke = Woke {
            nft: pending,
            legacy: 0,
        };
        if !pending {
            // Sleep until something changes: no timeout, no wakeups.
            while !(woke.nft || woke.legacy > 0) {
                woke = src.wait(None, &mut buf)?;
            }
        }
        // Then until QUIET passes without another change, or at most
        // SETTLE: legacy runs anywhere on the host (any network namespace,
        // a tool polling `iptables-legacy -L`) wake the watcher too, and a
        // steady stream of them must not put the check off for ever.
        let first = Instant::now();
        while first.elapsed() < SETTLE {
            let more = src.wait(
                Some(QUIET.min(SETTLE.saturating_sub(first.elapsed()))),
                &mut buf,
            )?;
            if !more.nft && more.legacy == 0 {
                break;
            }
            woke.nft |= more.nft;
            woke.legacy += more.legacy;
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
        // This check's own legacy runs end while it runs; any more ends
        // were another tool's, and call for another look.
        let ours = super::kernel::legacy_runs();
        match heal_once(root, config, requested, woke) {
            Ok(Some(what)) => {
                heals.push(Instant::now());
                tracing::warn!("capture rules re-applied (the kernel had: {what})");
                eprintln!("capture rules re-applied (the kernel had: {what})");
            }
            Ok(None) => {}
            Err(e) => tracing::error!("checking the capture rules: {e:#}"),
        }
        let ours = super::kernel::legacy_runs() - ours;
        let seen = src.wait(Some(Duration::ZERO), &mut buf)?;
        src.legacy(legacy_in_use());
        // nf_tables changes during the check (its own re-apply's among
        // them) are looked at again: that look finds a match, no loop.
        if seen.nft || seen.legacy > ours {
            pending = true;
        }
    }
}
