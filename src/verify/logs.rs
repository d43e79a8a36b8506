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

/// Most specific first: a line is attributed to the first match. Each entry
/// names the Istio (or Envoy) source that writes it; lines only istiod
/// writes, or only istio-start.sh's own iptables run (which goes to the
/// journal, not to /var/log/istio), are not here: they never reach these logs.
pub const KNOWN: &[Known] = &[
    // Envoy's own stream to the agent's XDS proxy, in istio.err.log (Envoy
    // writes to stderr): the proxy hands back the upstream gRPC status, code
    // 14 (Unavailable) with grpc-go's dial error. Envoy's
    // source/extensions/config_subscription/grpc/grpc_stream.h writes
    // `StreamAggregatedResources gRPC config stream closed: 14, ...` (newer
    // Envoys: `... stream to xds-grpc closed: 14, ...`).
    Known {
        code: "envoy.xds_refused",
        needles: &[
            "StreamAggregatedResources gRPC config stream",
            "closed: 14",
            "connection refused",
        ],
        weight: Weight::Error,
        meaning: "nothing accepts on istiod's address: the east-west gateway does not expose 15012 (expose-istiod.yaml) or the hosts address is wrong (see tcp.discovery)",
    },
    Known {
        code: "envoy.xds_no_host",
        needles: &[
            "StreamAggregatedResources gRPC config stream",
            "closed: 14",
            "no such host",
        ],
        weight: Weight::Error,
        meaning: "the discovery host does not resolve for the agent: the /etc/hosts line for istiod is missing (see dns.discovery)",
    },
    Known {
        code: "envoy.xds_timeout",
        needles: &[
            "StreamAggregatedResources gRPC config stream",
            "closed: 14",
            "i/o timeout",
        ],
        weight: Weight::Error,
        meaning: "istiod's address does not answer: a firewall or security group drops port 15012 (see tcp.discovery)",
    },
    Known {
        code: "envoy.xds_x509",
        needles: &[
            "StreamAggregatedResources gRPC config stream",
            "closed: 14",
            "x509",
        ],
        weight: Weight::Error,
        meaning: "istiod's certificate is not accepted: root-cert.pem does not match the mesh CA, or the discovery host is not a name in istiod's certificate (see tls.handshake)",
    },
    Known {
        code: "envoy.xds_closed",
        needles: &["StreamAggregatedResources gRPC config stream", "closed: 14"],
        weight: Weight::Error,
        meaning: "the agent's stream to istiod fails: see the network, TLS and CA checks",
    },
    // grpc-go's messages, logged by the agent (pkg/istio-agent/xds_proxy.go
    // `upstream terminated with unexpected error`, citadel client errors).
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
        meaning: "the discovery host is not among istiod's certificate names: use istiod.istio-system.svc with the hosts line, or set ISTIOD_SAN (1.12 and later)",
    },
    // pilot/pkg/xds/auth.go (master), pilot/pkg/xds/ads.go@1.10.0.
    Known {
        code: "xds.permission_denied",
        needles: &["PermissionDenied", "no identities"],
        weight: Weight::Error,
        meaning: "the credential's namespace/service account differs from ISTIO_NAMESPACE/SERVICE_ACCOUNT in cluster.env (istio#35249)",
    },
    // security/pkg/server/ca/server.go: `request authenticate failure`.
    Known {
        code: "auth.unauthenticated",
        needles: &["code = Unauthenticated"],
        weight: Weight::Error,
        meaning: "istiod accepted neither the workload certificate nor the token (token expired, or certificate expired): place a new token",
    },
    // security/pkg/credentialfetcher/plugin/token.go (master),
    // security/pkg/nodeagent/caclient/credentials.go@1.10.0.
    Known {
        code: "token.missing",
        needles: &["failed to fetch token from file"],
        weight: Weight::Error,
        meaning: "the token file is missing (a reboot emptied /var/run): run istio-vm install again, it restores the token from /var/lib/istio-vm",
    },
    // citadel/client.go@1.10.0 .. 1.12: no /etc/certs key pair yet.
    Known {
        code: "cert.first_boot",
        needles: &["cannot load key pair, using token instead"],
        weight: Weight::Notice,
        meaning: "no workload certificate yet: normal on first start while the token is valid, fatal if the token is missing or expired",
    },
    // citadel/client.go@1.11.0, pilot/pkg/grpc/tls.go (master).
    Known {
        code: "cert.first_boot",
        needles: &["cannot parse the cert chain, using token instead"],
        weight: Weight::Notice,
        meaning: "no workload certificate yet: normal on first start while the token is valid, fatal if the token is missing or expired",
    },
    Known {
        code: "cert.expired",
        needles: &["cert expired, using token instead"],
        weight: Weight::Notice,
        meaning: "the workload certificate expired: the agent falls back to the token, which must still be valid",
    },
    // security/pkg/nodeagent/sds/sdsservice.go.
    Known {
        code: "ca.failed",
        needles: &["failed to warm certificate"],
        weight: Weight::Error,
        meaning: "the CA is unreachable or rejected the request: see ca.token for the reason",
    },
    // pkg/security/retry.go.
    Known {
        code: "ca.failed",
        needles: &["ca request failed"],
        weight: Weight::Error,
        meaning: "the CA is unreachable or rejected the request: see ca.token for the reason",
    },
    // pkg/istio-agent/xds_proxy.go.
    Known {
        code: "xds.connect_failed",
        needles: &["failed to connect to upstream"],
        weight: Weight::Error,
        meaning: "the agent cannot dial istiod: hosts line wrong or missing, the gateway does not expose 15012, or a firewall (see dns/tcp/tls checks)",
    },
    // istiod's stream error, relayed by the agent
    // (pilot/pkg/autoregistration/controller.go; workloadentry_controller.go@1.10.0).
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
    // pilot/cmd/pilot-agent/status/ready/probe.go, logged by status/server.go
    // as `Envoy proxy is NOT ready: ...`: @1.10.0 and 1.11 say
    // `config not received from Pilot (is Pilot running?)`; from 1.12
    // `config not received from XDS server`, `... but was rejected`,
    // `config not fully received`.
    Known {
        code: "envoy.rejected",
        needles: &["Envoy proxy is NOT ready", "but was rejected"],
        weight: Weight::Error,
        meaning: "Envoy rejected the configuration istiod sent (NACK): check istio.log and that VM and istiod run compatible Istio versions",
    },
    Known {
        code: "envoy.not_ready",
        needles: &["Envoy proxy is NOT ready", "config not received from"],
        weight: Weight::Error,
        meaning: "XDS is not flowing: Envoy got no configuration from istiod (see the network and CA checks)",
    },
    Known {
        code: "envoy.partial",
        needles: &["Envoy proxy is NOT ready", "config not fully received"],
        weight: Weight::Notice,
        meaning: "Envoy has part of its configuration (clusters, not yet listeners): normal for a few seconds after start; if it stays, see log.errors and istiod's log",
    },
    // pkg/dns/client/dns.go (master).
    Known {
        code: "dns.not_root",
        needles: &["DNS address :53 and not running as root"],
        weight: Weight::Notice,
        meaning: "DNS_PROXY_ADDR asks for :53 but the agent is not root: it uses 15053 instead; remove DNS_PROXY_ADDR",
    },
    // security/pkg/nodeagent/sds/server.go: `failed to set up UDS`.
    Known {
        code: "sds.permission",
        needles: &["set up UDS", "permission denied"],
        weight: Weight::Error,
        meaning: "the agent cannot create its SDS socket under /var/run/secrets or /etc/istio/proxy (`bind: permission denied`, istio#42603): run istio-vm install again",
    },
];

/// Lines that mean the agent got its configuration. Not `connected to
/// upstream XDS server`: pkg/istio-agent/xds_proxy.go logs it when the
/// stream is created, before istiod has checked anything.
const SUCCESS: &[&str] = &["Envoy proxy is ready"];

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

    /// Real lines, each with the source that writes it: the file the
    /// integration tests feed through verify too.
    const LINES: &str = include_str!("../../tests/data/agent-log-lines.txt");

    fn lines() -> impl Iterator<Item = (&'static str, &'static str)> {
        LINES
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let mut p = l.splitn(3, '|');
                let code = p.next().unwrap();
                let _file = p.next().unwrap();
                (p.next().unwrap(), code)
            })
    }

    #[test]
    fn every_known_line_maps_to_its_meaning() {
        let mut n = 0;
        for (line, code) in lines() {
            let k = classify(line).unwrap_or_else(|| panic!("not recognised: {line}"));
            assert_eq!(k.code, code, "{line}");
            n += 1;
        }
        assert!(n >= 20, "the fixture lost lines: {n}");
        // pkg/istio-agent/xds_proxy.go: logged when the stream is created.
        let connected = "2026-11-27T05:00:00.000000Z\tinfo\txdsproxy\tconnected to upstream XDS server: istiod.istio-system.svc:15012";
        assert!(classify(connected).is_none());
        assert!(!is_success(connected), "no proof istiod accepted anything");
        // Only istiod (pilot/pkg/serviceregistry/kube/controller/controller.go) writes this.
        assert!(
            classify("proxy is in cluster cluster2, but controller is for cluster Kubernetes")
                .is_none()
        );
    }

    #[test]
    fn errors_before_the_last_success_are_history() {
        let log = "2026-11-27T05:00:00Z\twarn\tfailed to connect to upstream istiod:15012\n\
                   2026-11-27T05:00:01Z\tinfo\tEnvoy proxy is ready\n";
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
