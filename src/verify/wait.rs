//! `verify --wait`, fit for fleets: a thousand VMs booting at once retry
//! with exponential backoff and jitter (1 s up to 15 s), say on stderr what
//! still fails at each attempt (cloud-init's and Ansible's logs show it), and
//! ask istiod for at most one certificate per run while it is valid.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::ca::{self, Issued};
use super::inputs::{Inputs, Target};
use super::{Options, failed, files, once_with, pass};
use crate::logging::{self, Priority};
use crate::report::{Check, CheckStatus};

pub const FIRST_PAUSE: Duration = Duration::from_secs(1);
pub const MAX_PAUSE: Duration = Duration::from_secs(15);

/// The pause after failed attempt `attempt` (1-based): the exponential
/// step `1 s * 2^(attempt-1)` capped at 15 s, drawn uniformly from its upper
/// half (never below 1 s) so VMs that booted together spread out.
/// `unit` is a random number in [0, 1).
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    let step = FIRST_PAUSE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_PAUSE);
    let low = (step / 2).max(FIRST_PAUSE);
    low + (step - low).mul_f64(unit.clamp(0.0, 1.0))
}

/// A random number in [0, 1) from the standard library's per-process
/// random hasher keys (no crate needed for jitter).
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The certificate an earlier attempt of this run obtained, reused while it
/// is valid and the token and root certificate it was obtained with are
/// unchanged.
#[derive(Default)]
pub struct Reuse {
    held: Option<Held>,
    /// CreateCertificate calls made by this run.
    pub issued: u32,
}

struct Held {
    issued: Issued,
    not_after: i64,
    attempt_detail: String,
    token: Option<Vec<u8>>,
    root: Option<Vec<u8>>,
}

/// Reused only if it stays valid this much longer.
const MARGIN_SECS: i64 = 60;

impl Reuse {
    /// `ca.token`, from a certificate this run already holds if there is
    /// one, else by calling istiod.
    pub async fn ca_check(
        &mut self,
        inputs: &Inputs,
        t: &Target,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> (Check, Option<Issued>) {
        let now = super::now();
        if let Some(h) = &self.held
            && h.not_after > now + MARGIN_SECS
            && h.token == inputs.token
            && h.root == inputs.root_cert_pem
        {
            let c = pass(
                "ca.token",
                format!(
                    "reused the certificate an earlier attempt of this run obtained ({}), valid until {}",
                    h.attempt_detail,
                    files::fmt_time(h.not_after)
                ),
            );
            let issued = Issued {
                chain: h.issued.chain.clone(),
                key: h.issued.key_clone(),
            };
            return (c, Some(issued));
        }
        self.issued += 1;
        let (c, issued) = ca::check(inputs, t, addrs, timeout).await;
        self.held = None;
        if c.status == CheckStatus::Pass
            && let Some(i) = &issued
            && let Some(not_after) = i
                .chain
                .first()
                .and_then(|d| x509_parser::parse_x509_certificate(d).ok())
                .map(|(_, c)| c.validity().not_after.timestamp())
        {
            self.held = Some(Held {
                issued: Issued {
                    chain: i.chain.clone(),
                    key: i.key_clone(),
                },
                not_after,
                attempt_detail: c.detail.clone(),
                token: inputs.token.clone(),
                root: inputs.root_cert_pem.clone(),
            });
        }
        (c, issued)
    }
}

/// The progress line of a failed attempt.
pub fn progress_line(attempt: u32, failing: &[&str], pause: Duration, left: Duration) -> String {
    format!(
        "verify: attempt {attempt}: {} failing ({}); next attempt in {:.1}s, {}s left",
        failing.len(),
        failing.join(", "),
        pause.as_secs_f64(),
        left.as_secs()
    )
}

/// Runs the checks once, or with `wait` until nothing fails or time is up;
/// returns the last attempt's checks.
pub fn run(opts: &Options) -> Result<Vec<Check>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let deadline = opts.wait.map(|w| Instant::now() + w);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut reuse = Reuse::default();
    let mut attempt = 0;
    let checks = loop {
        attempt += 1;
        let checks = rt.block_on(once_with(opts, &mut reuse));
        let failing = failed(&checks);
        let Some(deadline) = deadline else {
            break checks;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if failing.is_empty() || left.is_zero() {
            let last = if failing.is_empty() {
                format!("verify: attempt {attempt}: every check passes")
            } else {
                format!(
                    "verify: attempt {attempt}: {} failing ({}); --wait is over",
                    failing.len(),
                    failing.join(", ")
                )
            };
            if terminal {
                if attempt > 1 {
                    eprintln!();
                }
            } else if attempt > 1 || !failing.is_empty() {
                logging::line(Priority::Info, &last);
            }
            break checks;
        }
        let pause = backoff(attempt, jitter()).min(left);
        let line = progress_line(attempt, &failing, pause, left);
        if terminal {
            eprint!("\r\x1b[K{line}");
        } else {
            logging::line(Priority::Info, &line);
        }
        // Retry cadence, not synchronisation: the next attempt re-reads
        // everything from scratch.
        rt.block_on(async move { tokio::time::sleep(pause).await });
    };
    tracing::debug!(
        "verify: {attempt} attempt(s), {} CreateCertificate call(s)",
        reuse.issued
    );
    // A getaddrinfo stuck on a dead resolver must not hold the exit.
    rt.shutdown_background();
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_to_fifteen_seconds_with_jitter() {
        let s = |a, u| backoff(a, u).as_secs_f64();
        assert_eq!(s(1, 0.0), 1.0);
        assert_eq!(s(1, 0.99), 1.0);
        assert_eq!((s(2, 0.0), s(2, 0.5)), (1.0, 1.5));
        assert_eq!((s(3, 0.0), s(3, 0.5)), (2.0, 3.0));
        assert_eq!((s(4, 0.0), s(4, 1.0)), (4.0, 8.0));
        assert_eq!((s(5, 0.0), s(5, 1.0)), (7.5, 15.0));
        assert_eq!(s(40, 1.0), 15.0);
        for a in 1..50 {
            for u in [0.0, 0.3, 0.999] {
                let p = backoff(a, u);
                assert!(p >= FIRST_PAUSE && p <= MAX_PAUSE, "{a} {u}: {p:?}");
            }
        }
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let xs: Vec<f64> = (0..32).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| (x - xs[0]).abs() > 1e-9));
    }

    #[test]
    fn progress_names_the_failing_checks() {
        let l = progress_line(
            3,
            &["ca.token", "xds.stream"],
            Duration::from_millis(2500),
            Duration::from_secs(100),
        );
        assert_eq!(
            l,
            "verify: attempt 3: 2 failing (ca.token, xds.stream); next attempt in 2.5s, 100s left"
        );
        assert!(!l.contains('\n'));
    }
}
