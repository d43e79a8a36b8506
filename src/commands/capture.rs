//! `istio-vm capture render|apply|remove|status [--backend]`.
//!
//! Reads the *placed* cluster.env (`/var/lib/istio/envoy/cluster.env`),
//! `/etc/resolv.conf` and the istio-proxy uid/gid from the root's
//! `/etc/passwd` / `/etc/group`, so it works the same on a running VM and on
//! a baked image. Under `--root` other than `/` only `render` is allowed:
//! nothing live changes there.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use super::Ctx;
use crate::capture::live::{self, Resolved};
use crate::capture::sysfiles;
use crate::capture::{self, Inputs, Rendered};
use crate::cli::{Backend, CaptureAction, CaptureArgs};
use crate::error::Failure;
use crate::layout;
use crate::report::{Report, Step, StepStatus};

/// cluster.env as istio-start.sh's `set -a; . cluster.env` sees it, for the
/// plain `KEY=value` / `KEY='value'` / `KEY="value"` lines istioctl writes.
/// (The full parser with Istio's quoting lives in `bundle::ClusterEnv`.)
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('\'') && v.ends_with('\''))
                || (v.starts_with('"') && v.ends_with('"')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        m.insert(k.trim().to_string(), v.to_string());
    }
    m
}

/// The inputs of a render, read from `root`.
pub struct Read {
    pub env: BTreeMap<String, String>,
    pub resolv: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub host_ipv6: bool,
}

pub fn read_inputs(root: &Path, live: bool) -> Result<Read> {
    let env_text = sysfiles::read_optional(root, layout::CLUSTER_ENV)?.ok_or_else(|| {
        anyhow!(
            "no cluster.env at {}: run `istio-vm install --bundle DIR` first (capture reads the \
             placed file)",
            root.join(layout::CLUSTER_ENV.trim_start_matches('/'))
                .display()
        )
    })?;
    let resolv = sysfiles::read_optional(root, "/etc/resolv.conf")?.unwrap_or_default();
    let (uid, gid) = sysfiles::proxy_ids(root, layout::PROXY_USER)?;
    Ok(Read {
        env: parse_env(&env_text),
        resolv,
        uid,
        gid,
        // Under --root the target host is unknown; DUAL_STACK still applies.
        host_ipv6: live && sysfiles::host_has_global_ipv6(),
    })
}

fn step(id: &str, status: StepStatus, detail: impl Into<String>) -> Step {
    Step {
        id: id.to_string(),
        status,
        detail: detail.into(),
        diff: None,
    }
}

pub fn run(ctx: &Ctx, args: &CaptureArgs) -> Result<Report> {
    let mut report = Report::new("capture");
    let live = ctx.live();
    if args.action != CaptureAction::Render && !live {
        return Err(Failure::Usage(format!(
            "`capture {}` changes or reads live netfilter state and is not available under \
             --root {}; use `capture render` (the capture unit applies the rules at boot)",
            action_name(args.action),
            ctx.root.display()
        ))
        .into());
    }
    let requested = if args.backend == Backend::Auto {
        ctx.config.backend
    } else {
        args.backend
    };

    // Render first: every action needs it except remove, which works by
    // state and only uses the rendering to recognise Istio's built-in rules.
    let read = read_inputs(&ctx.root, live);
    let native_nft = read
        .as_ref()
        .ok()
        .and_then(|r| r.env.get("NATIVE_NFTABLES").cloned())
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "True" | "t" | "T"));

    let backend = if live {
        Some(live::detect(requested, native_nft)?)
    } else {
        None
    };
    let model_backend = match (backend, requested) {
        (Some(b), _) => b.model(),
        (None, Backend::Nftables) => capture::Backend::Nftables,
        (None, Backend::Auto) if native_nft => capture::Backend::Nftables,
        (None, _) => capture::Backend::Iptables,
    };

    let rendered = read.and_then(|r| {
        if r.uid.is_none() {
            report.steps.push(step(
                "capture:user",
                StepStatus::Skipped,
                "no istio-proxy user in /etc/passwd: owner rules use uid 1337 (Istio's default)",
            ));
        }
        let inp = Inputs {
            env: &r.env,
            resolv_conf: &r.resolv,
            uid: r.uid,
            gid: r.gid,
            host_ipv6: r.host_ipv6,
            exclude_inbound_ports: &ctx.config.exclude_inbound_ports,
            allow_ssh_capture: ctx.config.allow_ssh_capture,
        };
        capture::render(&inp, model_backend).map_err(anyhow::Error::from)
    });

    if let Some(b) = backend {
        report
            .steps
            .push(step("capture:backend", StepStatus::Ok, b.name()));
    }

    match args.action {
        CaptureAction::Render => {
            let (cfg, r) = rendered?;
            for n in &cfg.notes {
                report
                    .steps
                    .push(step("capture:note", StepStatus::Ok, n.clone()));
            }
            for (name, _) in r.record_files() {
                report.steps.push(step(
                    &format!("capture:{name}"),
                    StepStatus::Ok,
                    format!(
                        "rendered ({})",
                        if cfg.ipv6 { "IPv4 and IPv6" } else { "IPv4" }
                    ),
                ));
            }
            report.rules = Some(r.text());
        }
        CaptureAction::Apply => {
            let (cfg, r) = rendered?;
            let b = backend.context("internal: no backend")?;
            if cfg.mode == capture::config::InterceptionMode::Tproxy {
                return Err(anyhow!(
                    "cluster.env sets ISTIO_INBOUND_INTERCEPTION_MODE=TPROXY, which needs policy \
                     routing (ip rule fwmark {} lookup 133) that istio-vm does not manage: use \
                     REDIRECT (remove the variable) or apply the rules with istio-iptables",
                    cfg.tproxy_mark
                ));
            }
            let out = apply_live(&r, b)?;
            report.changed = out.changed;
            report.steps.extend(out.steps);
        }
        CaptureAction::Remove => {
            let mut known = Vec::new();
            if let Ok((_, r)) = rendered {
                known.push(r);
            }
            known.extend(recorded(&ctx.root));
            let out = live::remove_live(&known)?;
            if !out.changed {
                report.steps.push(step(
                    "capture:remove",
                    StepStatus::Ok,
                    "no Istio rules present",
                ));
            }
            report.changed = out.changed;
            report.steps.extend(out.steps);
        }
        CaptureAction::Status => {
            let b = backend.context("internal: no backend")?;
            let r = match rendered {
                Ok((_, r)) => Some(r),
                Err(e) => {
                    report
                        .steps
                        .push(step("capture:render", StepStatus::Failed, format!("{e:#}")));
                    None
                }
            };
            let (steps, matches) = live::status(r.as_ref(), b)?;
            report.steps.extend(steps);
            report.ok = matches && r.is_some();
        }
    }
    Ok(report)
}

/// Apply live and report; the entry point install uses (after writing the
/// record files).
pub fn apply_live(r: &Rendered, b: Resolved) -> Result<live::Outcome> {
    live::apply_live(r, b)
}

/// The last-applied record under `/var/lib/istio-vm/capture/`, if any.
fn recorded(root: &Path) -> Vec<Rendered> {
    let read = |n: &str| {
        sysfiles::read_optional(root, &format!("{}/{n}", layout::CAPTURE_DIR))
            .ok()
            .flatten()
    };
    let mut out = Vec::new();
    if let Some(v4) = read("rules-v4") {
        out.push(Rendered::Iptables {
            v4,
            v6: read("rules-v6"),
        });
    } else if let Some(v6) = read("rules-v6") {
        out.push(Rendered::Iptables {
            v4: String::new(),
            v6: Some(v6),
        });
    }
    out
}

fn action_name(a: CaptureAction) -> &'static str {
    match a {
        CaptureAction::Render => "render",
        CaptureAction::Apply => "apply",
        CaptureAction::Remove => "remove",
        CaptureAction::Status => "status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_as_istioctl_writes_them() {
        let m = parse_env(
            "# c\nISTIO_INBOUND_PORTS='*'\nexport A=\"b c\"\nISTIO_SERVICE_CIDR=*\n\nX=\n",
        );
        assert_eq!(m["ISTIO_INBOUND_PORTS"], "*");
        assert_eq!(m["A"], "b c");
        assert_eq!(m["ISTIO_SERVICE_CIDR"], "*");
        assert_eq!(m["X"], "");
    }

    #[test]
    fn missing_cluster_env_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let e = read_inputs(d.path(), false).err().unwrap();
        assert!(format!("{e:#}").contains("istio-vm install"), "{e:#}");
    }
}
