//! `istio-vm verify`: proves this VM reaches istiod's XDS server, in the
//! order things depend on each other, and says why when it does not:
//!
//! files -> dns.discovery -> tcp.discovery -> tls.handshake -> ca.token ->
//! xds.stream, with the local agent (`agent.*`), the agent's log
//! (`log.errors`) and `--probe` URLs checked alongside. Each network step
//! is bounded by `--timeout`; independent branches run concurrently, so an
//! unreachable istiod costs about one timeout, not a sum.
//!
//! Files are read under `--root`; the network is probed from this host,
//! toward istiod as istio-proxy (so Istio's capture rules let it through as
//! they let the agent's through, see `net::Owner`), and with the addresses
//! and names of the installed sidecar's version (`version`). `--probe` is
//! an application's traffic and stays root's. Nothing is written anywhere. The key and certificate `ca.token` obtains
//! live only in memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::report::{Check, CheckStatus};

pub mod agent;
pub mod ca;
pub mod files;
pub mod grpc;
pub mod inputs;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod probe;
pub mod proto;
pub mod rules;
pub mod version;
pub mod wait;
pub mod xds;

/// Every check id verify reports, in report order: the contract's list
/// (docs/DESIGN.md "Check ids", compared by tests/design_doc.rs).
/// `probe.<host>` stands for one check per `--probe URL`.
pub const CHECK_IDS: &[&str] = &[
    "files.root_cert",
    "files.token",
    "files.token_persistent",
    "files.cluster_env",
    "files.mesh_config",
    "files.workload_cert",
    "files.dirs",
    "files.hosts",
    "files.sidecar",
    "dns.discovery",
    "tcp.discovery",
    "tls.handshake",
    "ca.token",
    "xds.stream",
    "agent.service",
    "agent.ready",
    "agent.xds",
    "agent.live",
    "agent.dns",
    "log.errors",
    "capture.rules",
    "probe.<host>",
];

/// What one verify run looks at.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    /// Root is `/`: live state (systemctl) may be looked at.
    pub live: bool,
    /// Bound on each network step.
    pub timeout: Duration,
    /// Repeat until nothing fails, for at most this long.
    pub wait: Option<Duration>,
    pub skip_agent: bool,
    pub probes: Vec<String>,
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn check(id: &str, status: CheckStatus, detail: impl Into<String>, hint: Option<String>) -> Check {
    Check {
        id: id.to_string(),
        status,
        detail: detail.into(),
        elapsed_ms: 0,
        hint,
    }
}

pub(crate) fn pass(id: &str, detail: impl Into<String>) -> Check {
    check(id, CheckStatus::Pass, detail, None)
}

pub(crate) fn fail(id: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    check(id, CheckStatus::Fail, detail, Some(hint.into()))
}

pub(crate) fn warn(id: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    check(id, CheckStatus::Warn, detail, Some(hint.into()))
}

pub(crate) fn skip(id: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    check(id, CheckStatus::Skip, detail, Some(hint.into()))
}

fn timed(start: Instant, mut c: Check) -> Check {
    c.elapsed_ms = start.elapsed().as_millis() as u64;
    c
}

async fn timed_fut(f: impl std::future::Future<Output = Check>) -> Check {
    let t = Instant::now();
    timed(t, f.await)
}

fn blocked(id: &str, by: &str) -> Check {
    skip(
        id,
        format!("not run: {by} did not pass"),
        format!("fix {by} first"),
    )
}

pub fn failed(checks: &[Check]) -> Vec<&str> {
    checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| c.id.as_str())
        .collect()
}

/// Runs the checks once, or with `wait` until nothing fails or time is up
/// (see [`wait`]); returns the last attempt's checks.
pub fn run(opts: &Options) -> Result<Vec<Check>> {
    wait::run(opts)
}

/// One pass over every check, in report order.
pub async fn once(opts: &Options) -> Vec<Check> {
    once_with(opts, &mut wait::Reuse::default()).await
}

/// [`once`], reusing the certificate an earlier attempt of a `--wait` run
/// obtained.
pub async fn once_with(opts: &Options, reuse: &mut wait::Reuse) -> Vec<Check> {
    let t = Instant::now();
    let inputs = inputs::Inputs::load(&opts.root);
    let mut out: Vec<Check> = files::checks(&opts.root, opts.live, &inputs, now())
        .into_iter()
        .map(|c| timed(t, c))
        .collect();
    let (chain, agent, probes) = tokio::join!(
        network(&inputs, opts.live, opts.timeout, reuse),
        agent_checks(opts, &inputs),
        probe_checks(opts)
    );
    out.extend(chain);
    out.extend(agent);
    let t = Instant::now();
    out.push(timed(t, logs::check(&opts.root)));
    let t = Instant::now();
    out.push(timed(t, rules::check(&opts.root)));
    out.extend(probes);
    out
}

/// dns -> tcp -> tls -> ca -> xds; a failed step skips the ones after it.
async fn network(
    inputs: &inputs::Inputs,
    live: bool,
    timeout: Duration,
    reuse: &mut wait::Reuse,
) -> Vec<Check> {
    let mut out = Vec::new();
    let t = Instant::now();
    let (c, resolved) = net::dns(inputs, live, timeout).await;
    out.push(timed(t, c));
    let (Some(target), Some(addrs)) = (inputs.discovery.clone(), resolved.discovery) else {
        for id in ["tcp.discovery", "tls.handshake", "ca.token", "xds.stream"] {
            out.push(blocked(id, "dns.discovery"));
        }
        return out;
    };
    let t = Instant::now();
    let (c, peer) = net::tcp(&target, &addrs, timeout, inputs.owner).await;
    out.push(timed(t, c));
    let Some(peer) = peer else {
        for id in ["tls.handshake", "ca.token", "xds.stream"] {
            out.push(blocked(id, "tcp.discovery"));
        }
        return out;
    };
    let t = Instant::now();
    let (c, tls_ok) = net::tls(inputs, &target, peer, timeout).await;
    out.push(timed(t, c));
    // The CA may live elsewhere (CA_ADDR); then its own connection is
    // checked inside ca.token.
    let (ca_target, ca_addrs) = match (&inputs.ca, resolved.ca) {
        (Some(ca), Some(a)) => (ca.clone(), a),
        _ => (target.clone(), vec![peer]),
    };
    if inputs.ca.is_none() && !tls_ok {
        for id in ["ca.token", "xds.stream"] {
            out.push(blocked(id, "tls.handshake"));
        }
        return out;
    }
    let t = Instant::now();
    let (c, issued) = reuse.ca_check(inputs, &ca_target, &ca_addrs, timeout).await;
    out.push(timed(t, c));
    let Some(issued) = issued else {
        out.push(blocked("xds.stream", "ca.token"));
        return out;
    };
    if !tls_ok {
        out.push(blocked("xds.stream", "tls.handshake"));
        return out;
    }
    let t = Instant::now();
    let c = xds::check(inputs, &target, &[peer], &issued, timeout).await;
    out.push(timed(t, c));
    out
}

async fn agent_checks(opts: &Options, inputs: &inputs::Inputs) -> Vec<Check> {
    let ids = [
        "agent.service",
        "agent.ready",
        "agent.xds",
        "agent.live",
        "agent.dns",
    ];
    if opts.skip_agent {
        return ids
            .iter()
            .map(|id| {
                skip(
                    id,
                    "--skip-agent",
                    "run without --skip-agent to check the local sidecar",
                )
            })
            .collect();
    }
    let to = opts.timeout;
    let (a, b, c, d, e) = tokio::join!(
        timed_fut(agent::service(opts.live)),
        timed_fut(agent::ready(to)),
        timed_fut(agent::connected(to)),
        timed_fut(agent::live(to)),
        timed_fut(agent::dns(inputs, to)),
    );
    vec![a, b, c, d, e]
}

async fn probe_checks(opts: &Options) -> Vec<Check> {
    let mut ids: Vec<String> = Vec::new();
    for (i, u) in opts.probes.iter().enumerate() {
        let id = probe::check_id(u, i, &ids);
        ids.push(id);
    }
    let to = opts.timeout;
    // `--probe` is an application's traffic: made as root, so capture
    // applies to it, which is the point.
    net::join_ordered(ids.into_iter().zip(opts.probes.iter().cloned()).map(
        |(id, url)| async move {
            let t = Instant::now();
            timed(t, probe::check(id, &url, to).await)
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run on an empty root reports every check (the network chain is
    /// skipped as blocked, the agent by --skip-agent), in CHECK_IDS' order.
    #[test]
    fn check_ids_lists_every_check_in_order() {
        let root = tempfile::tempdir().unwrap();
        let opts = Options {
            root: root.path().to_path_buf(),
            live: false,
            timeout: Duration::from_secs(1),
            wait: None,
            skip_agent: true,
            probes: Vec::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ran: Vec<String> = rt.block_on(once(&opts)).into_iter().map(|c| c.id).collect();
        let listed: Vec<&str> = CHECK_IDS
            .iter()
            .copied()
            .filter(|id| !id.starts_with("probe."))
            .collect();
        assert_eq!(ran, listed);
        assert_eq!(
            probe::check_id("http://a.example/", 0, &[]),
            "probe.a.example"
        );
    }
}
