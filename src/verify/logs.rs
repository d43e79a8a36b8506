//! `log.errors`: the newest lines of the agent's logs matched against the
//! error lines of reference §4.5, each mapped to what it means.

use std::path::Path;

use super::{fail, pass, skip, warn};
use crate::layout;
use crate::report::Check;

/// How much of each log's tail is read.
const TAIL_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Normal in some states (first boot); worth a mention.
    Notice,
    Error,
}

/// A known line: every needle must occur (case-insensitive).
pub struct Known {
    pub code: &'static str,
    pub needles: &'static [&'static str],
    pub weight: Weight,
    pub meaning: &'static str,
}

/// Most specific first: a line is attributed to the first match.
pub const KNOWN: &[Known] = &[
    Known {
        code: "ca.unknown_service",
        needles: &["unknown service istio.v1.auth.IstioCertificateService"],
        weight: Weight::Error,
        meaning: "CA_ADDR points at something that is not istiod's CA (an external CA without Istio's API, istio#57664): point CA_ADDR at istiod:15012",
    },
    Known {
        code: "tls.unknown_authority",
        needles: &["certificate signed by unknown authority"],
        weight: Weight::Error,
        meaning: "root-cert.pem does not match the CA that signed istiod's certificate (stale bundle or an external CA): regenerate the bundle",
    },
    Known {
        code: "tls.wrong_name",
        needles: &["x509: certificate is valid for"],
        weight: Weight::Error,
        meaning: "the discovery host is not among istiod's certificate names: use istiod.istio-system.svc with the hosts line, or set ISTIOD_SAN",
    },
    Known {
        code: "xds.permission_denied",
        needles: &["PermissionDenied", "no identities"],
        weight: Weight::Error,
        meaning: "the credential's namespace/service account differs from POD_NAMESPACE/SERVICE_ACCOUNT in cluster.env (istio#35249)",
    },
    Known {
        code: "auth.unauthenticated",
        needles: &["code = Unauthenticated"],
        weight: Weight::Error,
        meaning: "istiod accepted neither the workload certificate nor the token (token expired, or certificate expired): place a new token",
    },
    Known {
        code: "cluster.mismatch",
        needles: &["but controller is for cluster"],
        weight: Weight::Error,
        meaning: "ISTIO_META_CLUSTER_ID differs from istiod's cluster name (istio#27234): regenerate with --clusterID <istiod's cluster>",
    },
    Known {
        code: "cluster.unknown",
        needles: &["client claims to be in cluster"],
        weight: Weight::Error,
        meaning: "ISTIO_META_CLUSTER_ID names a cluster istiod does not know: use istiod's cluster name (--clusterID)",
    },
    Known {
        code: "token.missing",
        needles: &["failed to fetch token from file"],
        weight: Weight::Error,
        meaning: "the token file is missing (a reboot emptied /var/run): run istio-vm install again, it restores the token from /var/lib/istio-vm",
    },
    Known {
        code: "cert.first_boot",
        needles: &["cannot parse the cert chain, using token instead"],
        weight: Weight::Notice,
        meaning: "no workload certificate yet: normal on first start while the token is valid, fatal if the token is missing or expired",
    },
    Known {
        code: "cert.first_boot",
        needles: &["Failed to load key pair", "key.pem"],
        weight: Weight::Notice,
        meaning: "no workload certificate yet: normal on first start while the token is valid, fatal if the token is missing or expired (istio#48311)",
    },
    Known {
        code: "cert.expired",
        needles: &["cert expired, using token instead"],
        weight: Weight::Notice,
        meaning: "the workload certificate expired: the agent falls back to the token, which must still be valid",
    },
    Known {
        code: "ca.failed",
        needles: &["failed to warm certificate"],
        weight: Weight::Error,
        meaning: "the CA is unreachable or rejected the request: see ca.token for the reason",
    },
    Known {
        code: "ca.failed",
        needles: &["ca request failed"],
        weight: Weight::Error,
        meaning: "the CA is unreachable or rejected the request: see ca.token for the reason",
    },
    Known {
        code: "xds.connect_failed",
        needles: &["failed to connect to upstream"],
        weight: Weight::Error,
        meaning: "the agent cannot dial istiod: hosts line wrong or missing, the gateway does not expose 15012, or a firewall (see dns/tcp/tls checks)",
    },
    Known {
        code: "autoregister.no_group",
        needles: &["cannot find WorkloadGroup"],
        weight: Weight::Error,
        meaning: "--autoregister was used but the WorkloadGroup is not applied in the cluster: kubectl apply the WorkloadGroup",
    },
    Known {
        code: "autoregister.invalid_name",
        needles: &["WorkloadEntry", "is invalid: metadata.name"],
        weight: Weight::Error,
        meaning: "the WorkloadEntry name is invalid, e.g. an IPv6 address in it (istio#35343, fixed in 1.13): set ISTIO_SVC_IP to an IPv4 address or upgrade",
    },
    Known {
        code: "envoy.not_ready",
        needles: &["Envoy proxy is NOT ready: config not received from XDS server"],
        weight: Weight::Error,
        meaning: "XDS is not flowing: Envoy got no configuration from istiod (see the network and CA checks)",
    },
    Known {
        code: "dns.not_root",
        needles: &["DNS address :53 and not running as root"],
        weight: Weight::Notice,
        meaning: "DNS_PROXY_ADDR asks for :53 but the agent is not root: it uses 15053 instead; remove DNS_PROXY_ADDR",
    },
    Known {
        code: "sds.permission",
        needles: &["workload-spiffe-uds", "permission denied"],
        weight: Weight::Error,
        meaning: "/var/run/secrets is not writable by istio-proxy, so the SDS socket cannot be created (istio#42603): run istio-vm install again",
    },
    Known {
        code: "iptables.nat_missing",
        needles: &["unable to initialize table 'nat'"],
        weight: Weight::Error,
        meaning: "the kernel lacks the nat table modules (istio#23009): modprobe iptable_nat (or use the nftables backend)",
    },
    Known {
        code: "iptables.stale_chains",
        needles: &["Chain already exists"],
        weight: Weight::Error,
        meaning: "stale ISTIO_* chains from an older cleanup (istio#52835): `istio-vm capture remove`, then restart istio",
    },
];

/// Lines that mean the agent reached istiod.
const SUCCESS: &[&str] = &[
    "connected to upstream XDS server",
    "connected to delta upstream XDS server",
    "Envoy proxy is ready",
];

pub fn classify(line: &str) -> Option<&'static Known> {
    let l = line.to_ascii_lowercase();
    KNOWN.iter().find(|k| {
        k.needles
            .iter()
            .all(|n| l.contains(&n.to_ascii_lowercase()))
    })
}

fn is_success(line: &str) -> bool {
    SUCCESS.iter().any(|s| line.contains(s))
}

/// Leading RFC 3339 timestamp of an Istio log line, as comparable text.
fn stamp(line: &str) -> Option<&str> {
    let t = line.split_whitespace().next()?;
    (t.len() >= 20 && t.as_bytes()[4] == b'-' && t.as_bytes()[10] == b'T').then_some(t)
}

/// Redacts anything shaped like a JWT before a line is shown.
fn redact(line: &str) -> String {
    line.split(' ')
        .map(|w| {
            if w.starts_with("eyJ") && w.matches('.').count() >= 2 {
                "<redacted>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `TAIL_BYTES` of a log; `Ok(None)` if there is none. Through the
/// root's bounded reader: a FIFO at the log is refused, not waited on.
fn tail(root: &Path, path: &str) -> Result<Option<String>, String> {
    let r = crate::sysroot::Sysroot::new(root).map_err(|e| format!("{e:#}"))?;
    let Some(buf) = r.tail(path, TAIL_BYTES).map_err(|e| format!("{e:#}"))? else {
        return Ok(None);
    };
    let from_start = r
        .stat(path)
        .ok()
        .flatten()
        .is_some_and(|s| s.size <= TAIL_BYTES);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if !from_start {
        // Drop the partial first line.
        text = text
            .split_once('\n')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
    }
    Ok(Some(text))
}

/// A matched line, in log order.
struct Hit {
    known: &'static Known,
    line: String,
}

/// Matches both logs' text; errors older than the newest success line are
/// history and do not count.
pub fn scan(log: Option<&str>, err_log: Option<&str>) -> (Vec<(&'static Known, String)>, usize) {
    let mut current: Vec<Hit> = Vec::new();
    let mut history = 0;
    let mut last_ok: Option<String> = None;
    let mut seen_ok = false;
    for text in [log, err_log].into_iter().flatten() {
        for line in text.lines() {
            if is_success(line) {
                // Everything before a success in the same file is history.
                history += current.len();
                current.clear();
                seen_ok = true;
                if let Some(s) = stamp(line) {
                    last_ok = Some(s.to_string());
                }
                continue;
            }
            if let Some(k) = classify(line) {
                // Across files, timestamps decide; an unstamped line counts.
                let old = seen_ok
                    && match (stamp(line), &last_ok) {
                        (Some(s), Some(ok)) => s < ok.as_str(),
                        _ => false,
                    };
                if old {
                    history += 1;
                } else {
                    current.push(Hit {
                        known: k,
                        line: redact(line.trim()),
                    });
                }
            }
        }
    }
    // Newest first, one entry per meaning.
    let mut out: Vec<(&'static Known, String)> = Vec::new();
    for h in current.into_iter().rev() {
        if !out
            .iter()
            .any(|(k, _)| std::ptr::eq(*k, h.known) || k.meaning == h.known.meaning)
        {
            out.push((h.known, h.line));
        }
    }
    (out, history)
}

pub fn check(root: &Path) -> Check {
    let id = "log.errors";
    let (log, err) = match (
        tail(root, layout::ISTIO_LOG),
        tail(root, layout::ISTIO_ERR_LOG),
    ) {
        (Ok(l), Ok(e)) => (l, e),
        (Err(e), _) | (_, Err(e)) => {
            return warn(
                id,
                format!("cannot read the agent's log: {e}"),
                "the agent writes its log there: move what is in its place away",
            );
        }
    };
    if log.is_none() && err.is_none() {
        return skip(
            id,
            format!(
                "no agent log at {} yet: the sidecar has not run here",
                layout::ISTIO_LOG
            ),
            "start the sidecar (systemctl start istio); its log goes to /var/log/istio",
        );
    }
    let (hits, history) = scan(log.as_deref(), err.as_deref());
    let older = if history > 0 {
        format!(" ({history} older known line(s) before the last successful connection)")
    } else {
        String::new()
    };
    if hits.is_empty() {
        return pass(
            id,
            format!("no known error lines in the newest log lines{older}"),
        );
    }
    let newest: String = hits[0].1.chars().take(240).collect();
    let codes: Vec<&str> = hits.iter().map(|(k, _)| k.code).collect();
    let hint = hits
        .iter()
        .map(|(k, _)| format!("{}: {}", k.code, k.meaning))
        .collect::<Vec<_>>()
        .join("; ");
    let detail = format!(
        "{} ({}); newest: {newest}{older}",
        codes.join(", "),
        hits.len()
    );
    if hits.iter().any(|(k, _)| k.weight == Weight::Error) {
        fail(id, detail, hint)
    } else {
        warn(id, detail, hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of reference §4.5's table, as the agent (or istio-start.sh) logs it.
    const LINES: &[(&str, &str)] = &[
        (
            "2026-11-27T05:00:00.000000Z\twarn\txdsproxy\tfailed to connect to upstream istiod.istio-system.svc:15012: context deadline exceeded",
            "xds.connect_failed",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\txdsproxy\tupstream terminated with unexpected error: rpc error: code = Unavailable desc = connection error: desc = \"transport: authentication handshake failed: x509: certificate signed by unknown authority\"",
            "tls.unknown_authority",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tx509: certificate is valid for istiod.istio-system.svc, istiod-remote.istio-system.svc, not istiod.example.com",
            "tls.wrong_name",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\txdsproxy\tupstream terminated with unexpected error rpc error: code = Unauthenticated desc = authentication failure",
            "auth.unauthenticated",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\txdsproxy\tupstream terminated with unexpected error rpc error: code = PermissionDenied desc = authorization failed: no identities ([spiffe://cluster.local/ns/a/sa/x]) matched b/y",
            "xds.permission_denied",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tfailed to fetch token from file: open ./var/run/secrets/tokens/istio-token: no such file or directory",
            "token.missing",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tFailed to load key pair open etc/certs/key.pem: no such file or directory",
            "cert.first_boot",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tcannot parse the cert chain, using token instead: failed to read the cert, error is open etc/certs/cert-chain.pem: no such file or directory",
            "cert.first_boot",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tca\tca request failed, starting attempt 1 in 91.4ms",
            "ca.failed",
        ),
        (
            "2026-11-27T05:00:00.000000Z\terror\tcache\tsds failed to warm certificate: failed to generate workload certificate: create certificate: rpc error: code = Unavailable",
            "ca.failed",
        ),
        (
            "2026-11-27T05:00:00.000000Z\terror\tcitadelclient failed to sign CSR: rpc error: code = Unimplemented desc = unknown service istio.v1.auth.IstioCertificateService",
            "ca.unknown_service",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tauto-registration WorkloadEntry of vm1.vm-apps failed: cannot find WorkloadGroup vm-apps/ratings-vm",
            "autoregister.no_group",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tWorkloadEntry.networking.istio.io \"ratings-vm-fd00--1\" is invalid: metadata.name: Invalid value",
            "autoregister.invalid_name",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tEnvoy proxy is NOT ready: config not received from XDS server (is Istiod running?): cds updates: 0 successful, 0 rejected",
            "envoy.not_ready",
        ),
        (
            "2026-11-27T05:00:00.000000Z\tinfo\tdns\tDNS address :53 and not running as root, use default",
            "dns.not_root",
        ),
        (
            "2026-11-27T05:00:00.000000Z\terror\tsds\tFailed to set up UDS path: listen unix ./var/run/secrets/workload-spiffe-uds/socket: bind: permission denied",
            "sds.permission",
        ),
        (
            "iptables-restore: unable to initialize table 'nat'",
            "iptables.nat_missing",
        ),
        (
            "iptables-restore: line 5 failed: Chain already exists",
            "iptables.stale_chains",
        ),
        (
            "2026-11-27T05:00:00.000000Z\twarn\tcert expired, using token instead",
            "cert.expired",
        ),
        (
            "2026-11-27T05:00:00.000000Z\terror\tproxy is in cluster cluster2, but controller is for cluster Kubernetes",
            "cluster.mismatch",
        ),
    ];

    #[test]
    fn every_known_line_maps_to_its_meaning() {
        for (line, code) in LINES {
            let k = classify(line).unwrap_or_else(|| panic!("not recognised: {line}"));
            assert_eq!(k.code, *code, "{line}");
        }
        assert!(
            classify("2026-11-27T05:00:00Z info xdsproxy connected to upstream XDS server: x")
                .is_none()
        );
    }

    #[test]
    fn errors_before_the_last_success_are_history() {
        let log = "2026-11-27T05:00:00Z\twarn\tfailed to connect to upstream istiod:15012\n\
                   2026-11-27T05:00:01Z\tinfo\txdsproxy\tconnected to upstream XDS server: istiod:15012\n";
        let (hits, history) = scan(Some(log), None);
        assert!(hits.is_empty());
        assert_eq!(history, 1);
        let err = "2026-11-27T04:59:00Z\terror\tca request failed\n2026-11-27T05:10:00Z\terror\tca request failed\n";
        let (hits, history) = scan(Some(log), Some(err));
        assert_eq!(hits.len(), 1);
        assert_eq!(history, 2);
    }

    #[test]
    fn one_entry_per_meaning_newest_first() {
        let log = "a failed to connect to upstream x\nb code = Unauthenticated desc = authentication failure\nc failed to connect to upstream y\n";
        let (hits, _) = scan(Some(log), None);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].0.code, "xds.connect_failed");
        assert!(hits[0].1.starts_with('c'));
    }

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            redact("bad token eyJa.eyJb.sig here"),
            "bad token <redacted> here"
        );
    }
}
