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
use crate::config::Config;
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

/// What every action starts from: the backend and the kernel's state
/// (live only) and the rendering of the placed inputs (an error is kept:
/// remove and status can go on without it).
struct Prepared {
    backend: Option<Resolved>,
    snapshot: Option<live::Snapshot>,
    rendered: Result<(capture::IstioConfig, Rendered)>,
    steps: Vec<Step>,
}

fn prepare(root: &Path, config: &Config, requested: Backend, detect: bool) -> Result<Prepared> {
    let live = root == Path::new("/") && !crate::chroot::in_chroot();
    let read = read_inputs(root, live);
    let native_nft = read
        .as_ref()
        .ok()
        .and_then(|r| r.env.get("NATIVE_NFTABLES").cloned())
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "True" | "t" | "T"));
    let snapshot = (live && detect).then(live::Snapshot::take);
    let backend = match &snapshot {
        Some(s) => Some(live::detect(requested, native_nft, s)?),
        None => None,
    };
    let model_backend = match (backend, requested) {
        (Some(b), _) => b.model(),
        (None, Backend::Nftables) => capture::Backend::Nftables,
        (None, Backend::Auto) if native_nft => capture::Backend::Nftables,
        (None, _) => capture::Backend::Iptables,
    };
    let mut steps = Vec::new();
    if let Some(b) = backend {
        steps.push(step("capture:backend", StepStatus::Ok, b.name()));
    }
    let rendered = read.and_then(|r| {
        if r.uid.is_none() {
            steps.push(step(
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
            exclude_inbound_ports: &config.exclude_inbound_ports,
            exclude_outbound_cidrs: &config.exclude_outbound_cidrs,
            allow_ssh_capture: config.allow_ssh_capture,
        };
        capture::render(&inp, model_backend).map_err(anyhow::Error::from)
    });
    Ok(Prepared {
        backend,
        snapshot,
        rendered,
        steps,
    })
}

/// The IPv4 `iptables-nft-restore` started while the kernel is read and
/// the rules rendered (see [`live::prestart_restore`]): only on the live
/// root, never in a chroot, and not when nftables is asked for.
fn prestart(root: &Path, requested: Backend) -> Option<live::PrestartGuard> {
    let live = root == Path::new("/") && !crate::chroot::in_chroot();
    (live && requested != Backend::Nftables).then(live::prestart_restore)
}

/// Render from the placed files under `/`, apply live (a no-op when the
/// rules are already in place), add TPROXY policy routing if needed and
/// record the applied rules. For `install` (after it placed cluster.env)
/// and `capture apply`.
pub fn apply_on_root(root: &Path, config: &Config, requested: Backend) -> Result<live::Outcome> {
    apply_with(root, config, requested, live::ApplyOptions::default())
}

/// [`apply_on_root`] with the options of `capture apply`.
pub fn apply_with(
    root: &Path,
    config: &Config,
    requested: Backend,
    opts: live::ApplyOptions,
) -> Result<live::Outcome> {
    let _restore = prestart(root, requested);
    let p = prepare(root, config, requested, true)?;
    let mut out = live::Outcome {
        changed: false,
        steps: p.steps,
    };
    let (cfg, r) = p.rendered?;
    let (Some(b), Some(snap)) = (p.backend, p.snapshot) else {
        anyhow::bail!("capture apply needs the live root / (not --root, not a chroot)");
    };
    let applied = live::apply_live(&r, b, &snap, &recorded(root), opts)?;
    out.changed |= applied.changed;
    out.steps.extend(applied.steps);
    if let Some(t) = tproxy_routing(&cfg) {
        let routing = live::apply_tproxy_routing(&t)?;
        out.changed |= routing.changed;
        out.steps.extend(routing.steps);
    }
    let dir = sysfiles::resolve_in_root(root, layout::CAPTURE_DIR)?;
    out.steps.extend(live::write_record(&dir, &r)?);
    Ok(out)
}

/// Remove, by state and from every backend, the Istio capture rules the
/// record under `/var/lib/istio-vm/capture/` says istio-vm applied (never
/// another tool's `ISTIO_*` chains); works even when cluster.env is gone.
/// For `uninstall` and `capture remove`.
pub fn remove_on_root(root: &Path, config: &Config) -> Result<live::Outcome> {
    let _restore = prestart(root, Backend::Auto);
    let p = prepare(root, config, Backend::Auto, false)?;
    // The routing table of the current rendering, when it is TPROXY's.
    let mut route_tables = Vec::new();
    if let Ok((cfg, _)) = p.rendered {
        if cfg.mode == capture::config::InterceptionMode::Tproxy {
            route_tables.push(cfg.tproxy_route_table);
        }
    }
    let mut out = live::remove_live(&recorded(root), &route_tables)?;
    if !out.changed {
        out.steps.push(step(
            "capture:remove",
            StepStatus::Ok,
            "no Istio rules present",
        ));
    }
    Ok(out)
}

pub fn run(ctx: &Ctx, args: &CaptureArgs) -> Result<Report> {
    let mut report = Report::new("capture");
    if args.action != CaptureAction::Render && !ctx.live() {
        let place = if crate::chroot::in_chroot() {
            "in a chroot (the host's netfilter is not this root's)".to_string()
        } else {
            format!("under --root {}", ctx.root.display())
        };
        return Err(Failure::Usage(format!(
            "`capture {}` changes or reads live netfilter state and is not available {place}; \
             use `capture render` (the capture unit applies the rules at boot)",
            action_name(args.action),
        ))
        .into());
    }
    let requested = if args.backend == Backend::Auto {
        ctx.config.backend
    } else {
        args.backend
    };
    match args.action {
        CaptureAction::Render => {
            // The text does not depend on legacy vs nft: no detection needed.
            let p = prepare(&ctx.root, &ctx.config, requested, false)?;
            report.steps.extend(p.steps);
            let (cfg, r) = p.rendered?;
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
            let (text, other) = stdout_rules(&r, args.family);
            if let Some(other) = other {
                report
                    .steps
                    .push(step("capture:family", StepStatus::Ok, other));
            }
            report.rules = Some(text);
        }
        CaptureAction::Apply => {
            let opts = live::ApplyOptions {
                replace_foreign: args.replace_foreign,
            };
            let out = apply_with(&ctx.root, &ctx.config, requested, opts)?;
            report.changed = out.changed;
            report.steps.extend(out.steps);
        }
        CaptureAction::Remove => {
            let out = remove_on_root(&ctx.root, &ctx.config)?;
            report.changed = out.changed;
            report.steps.extend(out.steps);
        }
        CaptureAction::Watch => {
            let out = crate::capture::watch::run(&ctx.root, &ctx.config, requested)?;
            report.changed = out.changed;
            report.steps.extend(out.steps);
        }
        CaptureAction::Status => {
            let p = prepare(&ctx.root, &ctx.config, requested, true)?;
            report.steps.extend(p.steps);
            let b = p.backend.context("internal: no backend")?;
            let snap = p.snapshot.context("internal: no snapshot")?;
            let mut routing_ok = true;
            let r = match p.rendered {
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
            // Status is a check: exit 1 when the live rules are missing or
            // differ from what this VM's files render.
            let (steps, matches) = live::status(r.as_ref(), b, &snap)?;
            report.steps.extend(steps);
            report.ok = matches && routing_ok && r.is_some();
        }
    }
    Ok(report)
}

/// The policy routing TPROXY interception needs, if the mode is TPROXY.
pub fn tproxy_routing(cfg: &capture::IstioConfig) -> Option<live::TproxyRouting> {
    (cfg.mode == capture::config::InterceptionMode::Tproxy).then(|| live::TproxyRouting {
        mark: cfg.tproxy_mark.clone(),
        table: cfg.tproxy_route_table.clone(),
        ipv6: cfg.ipv6,
    })
}

/// What `capture render` prints on stdout: exactly one restore input (the
/// chosen family's) or one `nft -f` script, so it pipes into
/// `iptables-restore --test` / `nft -c -f -`; plus a note for the report
/// when the other family has rules too.
fn stdout_rules(r: &Rendered, family: crate::cli::RenderFamily) -> (String, Option<String>) {
    use crate::cli::RenderFamily as F;
    match (r, family) {
        (Rendered::Iptables { v4, v6 }, F::Ipv4) => (
            v4.clone(),
            v6.as_ref()
                .map(|_| "IPv6 rules too: `capture render --family ipv6` prints them".to_string()),
        ),
        (Rendered::Iptables { v6: Some(v6), .. }, F::Ipv6) => (v6.clone(), None),
        (Rendered::Iptables { .. }, F::Ipv6) => (
            String::new(),
            Some("no IPv6 rules (IPv6 capture is off)".to_string()),
        ),
        (Rendered::Nftables { script }, _) => (script.clone(), None),
    }
}

/// The last-applied record under `/var/lib/istio-vm/capture/` (empty when
/// there is none): what istio-vm may remove, and what counts as its own.
pub fn recorded(root: &Path) -> Vec<Rendered> {
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
    if let Some(script) = read("rules.nft") {
        out.push(Rendered::Nftables { script });
    }
    out
}

fn action_name(a: CaptureAction) -> &'static str {
    match a {
        CaptureAction::Render => "render",
        CaptureAction::Apply => "apply",
        CaptureAction::Remove => "remove",
        CaptureAction::Status => "status",
        CaptureAction::Watch => "watch",
    }
}

// Plug-ins for install/uninstall (src/commands/install.rs wires them into
// `generated_files`, `install_hooks`, `uninstall_hooks`).

/// The capture record files for install's plan (root, 0600, under
/// `layout::CAPTURE_DIR`, whose directory is root 0700), rendered from the
/// cluster.env about to be placed (`env`, from the bundle) and the root's
/// resolv.conf and istio-proxy ids. A refused rendering (SSH captured, bad
/// value) is an error: install must stop before changing anything. Live,
/// the apply hook rewrites them only if its rendering differs (e.g. the
/// istio-proxy user was created by this same install).
pub fn plan_records(
    root: &Path,
    config: &Config,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<crate::plan::FileAction>> {
    let live = root == Path::new("/") && !crate::chroot::in_chroot();
    let resolv = sysfiles::read_optional(root, "/etc/resolv.conf")?.unwrap_or_default();
    let (uid, gid) = sysfiles::proxy_ids(root, layout::PROXY_USER)?;
    let native_nft = env
        .get("NATIVE_NFTABLES")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "True" | "t" | "T"));
    let backend = match config.backend {
        Backend::Nftables => capture::Backend::Nftables,
        Backend::Auto if native_nft => capture::Backend::Nftables,
        _ => capture::Backend::Iptables,
    };
    let inp = Inputs {
        env,
        resolv_conf: &resolv,
        uid,
        gid,
        host_ipv6: live && sysfiles::host_has_global_ipv6(),
        exclude_inbound_ports: &config.exclude_inbound_ports,
        exclude_outbound_cidrs: &config.exclude_outbound_cidrs,
        allow_ssh_capture: config.allow_ssh_capture,
    };
    let files = capture::record_files(&inp, backend)?;
    Ok(files
        .into_iter()
        .map(|(name, content)| crate::plan::FileAction {
            path: format!("{}/{name}", layout::CAPTURE_DIR),
            content: content.into_bytes(),
            owner: layout::Owner::Root,
            mode: 0o600,
            secret: false,
        })
        .collect())
}

/// Install's live hook: `capture apply` from the placed files; undone by
/// removing the Istio rules again.
pub fn apply_hook() -> crate::plan::Hook {
    crate::plan::Hook {
        id: "hook:capture-apply".into(),
        detail: "apply the traffic capture rules (one transaction per family)".into(),
        run: |env| apply_on_root(&env.root, &env.config, env.config.backend).map(|_| ()),
        undo: Some(|env| remove_on_root(&env.root, &env.config).map(|_| ())),
        after_change_of: Vec::new(),
        creates: Vec::new(),
    }
}

/// Uninstall's live hook: remove every Istio capture rule by state; undone
/// by applying again from the still-placed files.
pub fn remove_hook() -> crate::plan::Hook {
    crate::plan::Hook {
        id: "hook:capture-remove".into(),
        detail: "remove the traffic capture rules (by state, every backend)".into(),
        run: |env| remove_on_root(&env.root, &env.config).map(|_| ()),
        undo: Some(|env| apply_on_root(&env.root, &env.config, env.config.backend).map(|_| ())),
        after_change_of: Vec::new(),
        creates: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_records_render_for_the_plan_and_refuse_ssh() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "istio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n",
        )
        .unwrap();
        let env: std::collections::BTreeMap<String, String> = [
            ("ISTIO_INBOUND_PORTS", "*"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let files = plan_records(d.path(), &Config::default(), &env).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "/var/lib/istio-vm/capture/rules-v4");
        assert_eq!(
            (files[0].mode, files[0].owner),
            (0o600, layout::Owner::Root)
        );
        let text = String::from_utf8(files[0].content.clone()).unwrap();
        assert!(text.contains("--dport 22 -j RETURN"), "{text}");
        assert!(text.contains("--uid-owner 998"), "{text}");
        assert!(text.contains("-d 127.0.0.53/32"), "{text}");

        let mut env = env;
        env.insert("ISTIO_INBOUND_PORTS".into(), "22".into());
        let e = plan_records(d.path(), &Config::default(), &env).unwrap_err();
        assert!(format!("{e:#}").contains("SSH"), "{e:#}");
    }
}
