//! `istio-vm capture render|apply|remove|status [--backend]`.
//!
//! Reads the *placed* cluster.env (`/var/lib/istio/envoy/cluster.env`),
//! `/etc/resolv.conf` and the istio-proxy uid/gid from the root's
//! `/etc/passwd` / `/etc/group`, so it works the same on a running VM and on
//! a baked image. Under `--root` other than `/` only `render` is allowed:
//! nothing live changes there.

use std::path::Path;

use anyhow::{Context, Result};

use super::Ctx;
use crate::capture::live::{self, Resolved};
use crate::capture::sysfiles::{self, read_inputs};
use crate::capture::{self, Inputs, Rendered};
use crate::cli::{Backend, CaptureAction, CaptureArgs};
use crate::error::Failure;
use crate::layout;
use crate::report::{Report, Step, StepStatus};

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

    // Remove works by state across every backend, so it needs no choice
    // (and must work on a mixed legacy/nft host, which detect refuses).
    let backend = if live && args.action != CaptureAction::Remove {
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
            let out = apply_live(&r, b)?;
            report.changed = out.changed;
            report.steps.extend(out.steps);
            if let Some(t) = tproxy_routing(&cfg) {
                let out = live::apply_tproxy_routing(&t)?;
                report.changed |= out.changed;
                report.steps.extend(out.steps);
            }
        }
        CaptureAction::Remove => {
            let mut known = Vec::new();
            let mut route_tables = Vec::new();
            if let Ok((cfg, r)) = rendered {
                known.push(r);
                route_tables.push(cfg.tproxy_route_table);
            }
            known.extend(recorded(&ctx.root));
            let out = live::remove_live(&known, &route_tables)?;
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
            let mut routing_ok = true;
            let r = match rendered {
                Ok((cfg, r)) => {
                    if let Some(t) = tproxy_routing(&cfg) {
                        routing_ok = live::tproxy_routing_present(&t);
                        report.steps.push(step(
                            "capture:tproxy-routing",
                            if routing_ok {
                                StepStatus::Ok
                            } else {
                                StepStatus::Failed
                            },
                            if routing_ok {
                                "policy routing present"
                            } else {
                                "policy routing for TPROXY missing"
                            },
                        ));
                    }
                    Some(r)
                }
                Err(e) => {
                    report
                        .steps
                        .push(step("capture:render", StepStatus::Failed, format!("{e:#}")));
                    None
                }
            };
            let (steps, matches) = live::status(r.as_ref(), b)?;
            report.steps.extend(steps);
            report.ok = matches && routing_ok && r.is_some();
        }
    }
    Ok(report)
}

/// Apply live and report; the entry point install uses (after writing the
/// record files).
pub fn apply_live(r: &Rendered, b: Resolved) -> Result<live::Outcome> {
    live::apply_live(r, b)
}

/// The policy routing TPROXY interception needs, if the mode is TPROXY.
pub fn tproxy_routing(cfg: &capture::IstioConfig) -> Option<live::TproxyRouting> {
    (cfg.mode == capture::config::InterceptionMode::Tproxy).then(|| live::TproxyRouting {
        mark: cfg.tproxy_mark.clone(),
        table: cfg.tproxy_route_table.clone(),
        ipv6: cfg.ipv6,
    })
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
