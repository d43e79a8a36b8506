//! `install` and `uninstall`: bundle -> findings -> plan -> apply -> report.

use std::collections::BTreeSet;

use anyhow::Result;

use super::Ctx;
use crate::apply::{self, Entry, Prior, Root, State, cloudinit, fsops, lock, systemd, user};
use crate::bundle::{self, Bundle};
use crate::cli::InstallArgs;
use crate::error::Failure;
use crate::layout;
use crate::plan::{self, Action, Current, Facts, HookEnv, Op, Planned};
use crate::report::{Report, Step, StepStatus};
use crate::units;

/// Read what is at every path the actions touch.
fn gather(root: &Root, actions: &[Action]) -> Result<Facts> {
    let mut facts = Facts {
        proxy_ids: user::proxy_ids(root)?,
        can_chown: nix::unistd::geteuid().is_root(),
        ..Default::default()
    };
    for a in actions {
        let path = match a {
            Action::Dir(d) => &d.path,
            Action::File(f) => &f.path,
            Action::Block(b) => &b.path,
            Action::User | Action::Hook(_) => continue,
        };
        let r = root.resolve(path)?;
        facts
            .current
            .insert(path.clone(), fsops::read_current(&r.host)?);
    }
    Ok(facts)
}

fn step(p: &Planned) -> Step {
    Step {
        id: p.id.clone(),
        status: p.status,
        detail: p.detail.clone(),
        diff: p.diff.clone(),
    }
}

fn hook_env(ctx: &Ctx) -> HookEnv {
    HookEnv {
        root: ctx.root.clone(),
        config: ctx.config.clone(),
    }
}

/// The state after this run: earlier entries keep their prior (what was
/// there before the *first* install), new paths are added.
fn next_state(
    old: Option<&State>,
    root: &Root,
    bundle: &Bundle,
    planned: &[Planned],
    recorded: &[Entry],
    dropped: &BTreeSet<String>,
) -> State {
    let mut entries: Vec<Entry> = old
        .map(|s| s.entries.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !dropped.contains(&e.path))
        .collect();
    let books = apply::Books::of(root).ok();
    let transient = |e: &Entry| match &books {
        Some(b) => b.is_transient(&e.path),
        None => {
            e.path == apply::JOURNAL
                || e.path == layout::STATE_FILE
                || e.path.starts_with(&format!("{}/", layout::BACKUP_DIR))
        }
    };
    for e in recorded {
        if transient(e)
            || e.kind == apply::LINK
            || dropped.contains(&e.path)
            || entries.iter().any(|x| x.path == e.path)
        {
            continue;
        }
        entries.push(e.clone());
    }
    // Kind and installed digest of every path the plan owns.
    for p in planned {
        let (path, kind, digest) = match &p.action {
            Action::File(f) => (
                &f.path,
                "file",
                (!f.secret).then(|| apply::sha256_hex(&f.content)),
            ),
            Action::Block(b) => (&b.path, "block", None),
            Action::Dir(d) => (&d.path, "dir", None),
            _ => continue,
        };
        let Ok(r) = root.resolve(path) else { continue };
        if let Some(e) = entries.iter_mut().find(|e| e.path == r.real) {
            e.kind = kind.into();
            e.id = Some(p.id.clone());
            if kind == "file" {
                e.sha256 = digest;
            }
        }
    }
    State {
        format: 1,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        bundle_sha256: bundle.digest(),
        entries,
    }
}

// Where other areas plug in. Files are planned, backed up, placed, recorded
// in state.json and removed by uninstall like every other file; hooks run only
// live (root `/`), in order, after every file is placed, and their `undo` runs
// if a later step fails.

/// Generated files (systemd units and drop-in from units.rs, capture rule
/// records under /var/lib/istio-vm/capture/).
fn generated_files(unit_files: &[units::GeneratedFile]) -> Vec<plan::FileAction> {
    unit_files
        .iter()
        .map(|f| plan::FileAction {
            path: f.path.into(),
            content: f.content.clone().into_bytes(),
            owner: layout::Owner::Root,
            mode: f.mode,
            secret: false,
        })
        .collect()
}

/// Live hooks of an install (capture apply; systemctl daemon-reload, enable,
/// start), e.g. `Hook { after_change_of: vec![layout::CAPTURE_UNIT.into()], .. }`.
fn install_hooks(
    args: &InstallArgs,
    unit_files: &[units::GeneratedFile],
    capture: bool,
) -> Vec<plan::Hook> {
    systemd::install_hooks(unit_files, !args.no_start, capture)
}

/// Live hooks of an uninstall, run before any file is restored (systemctl
/// stop/disable, capture remove).
fn uninstall_hooks(state: &State) -> Vec<plan::Hook> {
    // The sidecar (and with it the capture unit and its rules) stops before
    // its units go.
    if state.entries.iter().any(|e| e.path == layout::ISTIO_DROPIN) {
        vec![
            systemd::uninstall_stop_hook(),
            systemd::uninstall_disable_hook(),
        ]
    } else {
        Vec::new()
    }
}

pub fn install(ctx: &Ctx, args: &InstallArgs) -> Result<Report> {
    let mut report = Report::new("install");
    report.check_mode = args.check;
    let (src, sha) = (&args.bundle.bundle, args.bundle.sha256.as_deref());
    bundle::source::check_args(src, sha).map_err(Failure::Usage)?;
    let load = bundle::source::LoadOptions {
        fetch_timeout: ctx.config.fetch_timeout,
    };
    let bundle = match bundle::source::load_with(src, sha, &load) {
        Ok(b) => b,
        Err(findings) => {
            report.findings = findings;
            report.ok = false;
            return Ok(report);
        }
    };
    // A bundle with errors is refused before anything is touched (exit 1);
    // warnings are reported and the install goes on.
    let opts = super::validate_options(ctx, &args.bundle);
    report.findings =
        crate::validate::validate_with(&bundle, time::OffsetDateTime::now_utc(), &opts).findings;
    if report.has_errors() {
        report.ok = false;
        return Ok(report);
    }

    let root = Root::new(&ctx.root).map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let live = root.is_live();
    let _lock = if args.check {
        lock::acquire_shared(&root, ctx.config.lock_timeout)?
    } else {
        Some(lock::acquire(&root, ctx.config.lock_timeout)?)
    };
    if args.check {
        if matches!(
            fsops::read_current(&root.resolve(apply::JOURNAL)?.host)?,
            Current::File { .. }
        ) {
            report.steps.push(Step {
                id: "journal".into(),
                status: StepStatus::Changed,
                detail: "an interrupted run would be rolled back first".into(),
                diff: None,
            });
        }
    } else {
        recover_and_tidy(&root, &mut report)?;
    }

    let mut created_user = None;
    if live && !args.check && user::proxy_ids(&root)?.is_none() {
        created_user = Some(user::create()?);
    }
    let result = install_locked(
        ctx,
        args,
        &root,
        &bundle,
        &mut report,
        created_user.is_some(),
    );
    if let Err(e) = result {
        if let Some(c) = created_user
            && let Err(u) = user::undo(c)
        {
            return Err(e.context(format!(
                "removing the istio-proxy user this run created failed too: {u:#}"
            )));
        }
        // The bundle is refused by capture's own reading of cluster.env:
        // that is a finding like validate's, never an error without one.
        if let Some(finding) = capture_refusal(&e) {
            report.findings.push(finding);
            report.ok = false;
            return Ok(report);
        }
        return Err(with_failed_steps(e, report));
    }
    Ok(report)
}

/// A capture rendering refusal as the finding validate would give.
fn capture_refusal(err: &anyhow::Error) -> Option<crate::report::Finding> {
    use crate::capture::config::CaptureError;
    let e = err.chain().find_map(|e| e.downcast_ref::<CaptureError>())?;
    let code = match e {
        CaptureError::SshCaptured { .. } => "env.ssh_captured",
        CaptureError::InvalidValue { .. } => "env.invalid_value",
    };
    Some(crate::report::Finding::error(
        code,
        Some(bundle::CLUSTER_ENV),
        e.to_string(),
        "correct cluster.env (`istio-vm validate` shows every finding), then run again",
    ))
}

/// Roll back an interrupted run, then finish the cleanup of a committed one
/// (see `apply::tidy`): whatever moment a run was killed at, this one starts
/// from a converged tree.
fn recover_and_tidy(root: &Root, report: &mut Report) -> Result<()> {
    let recovered = apply::recover(root)?;
    let tidied = apply::tidy(root)?;
    for (id, detail) in [("journal", recovered), ("cleanup", tidied)] {
        if let Some(detail) = detail {
            report.steps.push(Step {
                id: id.into(),
                status: StepStatus::Changed,
                detail,
                diff: None,
            });
            report.changed = true;
        }
    }
    Ok(())
}

/// Attach the planned steps to a rolled-back run's error, so the report
/// (JSON included) shows which step failed and that nothing stayed changed.
fn with_failed_steps(err: anyhow::Error, mut report: Report) -> anyhow::Error {
    let Some(failed) = crate::error::failed_step(&err).map(str::to_string) else {
        return err;
    };
    let mut reached = false;
    for s in &mut report.steps {
        if s.id == failed {
            s.status = StepStatus::Failed;
            s.detail = format!("failed; planned: {}", s.detail);
            reached = true;
        } else if s.status == StepStatus::Changed {
            s.status = StepStatus::Skipped;
            s.detail = if reached {
                format!("not run: {}", s.detail)
            } else {
                format!("rolled back: {}", s.detail)
            };
        }
    }
    report.ok = false;
    report.changed = false;
    err.context(crate::error::ReportOnError(Box::new(report)))
}

fn install_locked(
    ctx: &Ctx,
    args: &InstallArgs,
    root: &Root,
    bundle: &Bundle,
    report: &mut Report,
    created_user: bool,
) -> Result<()> {
    let capture = !args.no_capture && ctx.config.capture;
    // Without the package's units in /usr/lib (a copied binary), install
    // places the embedded copies under /etc.
    let packaged = root.resolve(layout::CAPTURE_UNIT)?.host.exists();
    let unit_files = units::render(&units::Options {
        capture,
        packaged,
        verify: (&ctx.config).into(),
    });
    let mut extra_files = generated_files(&unit_files);
    let mut extra_dirs = Vec::new();
    if capture {
        // The record of the rules; the capture unit renders afresh at each
        // start, so this is what `capture status` and a reader compare with.
        // A refused rendering (e.g. SSH captured) stops the install here,
        // before anything changed.
        let env = bundle::ClusterEnv::parse(bundle.file(bundle::CLUSTER_ENV).unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("cluster.env: {e}"))?;
        extra_dirs.push(plan::DirAction {
            path: layout::CAPTURE_DIR.into(),
            owner: layout::Owner::Root,
            mode: 0o700,
        });
        extra_files.extend(crate::commands::capture::plan_records(
            &ctx.root,
            &ctx.config,
            &env.to_map(),
        )?);
    }
    let input = plan::Input {
        bundle: Some(bundle),
        live: root.is_live(),
        cloud_init_templates: cloudinit::hosts_templates(root)?,
        extra_dirs,
        extra_files,
        // Under --root nothing is started: the units come up at first boot,
        // enabled offline.
        hooks: if root.is_live() {
            install_hooks(args, &unit_files, capture)
        } else {
            systemd::baked_install_hooks(capture)
        },
    };
    let actions = plan::desired(&input);
    let facts = gather(root, &actions)?;
    let planned = plan::evaluate(&actions, &facts, args.diff)?;
    for p in &planned {
        let mut s = step(p);
        if matches!(p.action, Action::User) && created_user {
            s.status = StepStatus::Changed;
            s.detail = "created system user and group (home /var/lib/istio, no login)".into();
        }
        report.steps.push(s);
    }
    // What an earlier install placed and this one no longer does (the
    // capture unit and rule record after `--no-capture`) is put back as it
    // was before, in the same transaction: reversible like everything else.
    let old = apply::load_state(root)?;
    let dropped = dropped_entries(root, old.as_ref(), &planned);
    let mut drop_ops: Vec<(String, Op)> = Vec::new();
    if root.is_live() && dropped.iter().any(|e| e.path == layout::CAPTURE_UNIT) {
        // The rules go with the unit that owns them.
        let h = systemd::uninstall_stop_hook();
        report.steps.push(Step {
            id: h.id.clone(),
            status: StepStatus::Changed,
            detail: h.detail.clone(),
            diff: None,
        });
        drop_ops.push((h.id.clone(), Op::Hook(h)));
    }
    let can_chown = nix::unistd::geteuid().is_root();
    for e in dropped.iter().rev() {
        let Some((detail, op)) = undo_entry(root, e, can_chown)? else {
            continue;
        };
        let id = entry_id(e);
        report.steps.push(Step {
            id: id.clone(),
            status: StepStatus::Changed,
            detail: format!("no longer installed: {detail}"),
            diff: None,
        });
        drop_ops.push((id, op));
    }
    report.changed |= report.steps.iter().any(|s| s.status == StepStatus::Changed);
    if args.check {
        return Ok(());
    }

    let dropped_paths: BTreeSet<String> = dropped.iter().map(|e| e.path.clone()).collect();
    let ops: Vec<(String, Op)> = drop_ops
        .into_iter()
        .chain(
            planned
                .iter()
                .filter_map(|p| p.op.clone().map(|o| (p.id.clone(), o)))
                .filter(|(_, o)| !matches!(o, Op::CreateUser)),
        )
        .collect();
    let unchanged_state = next_state(old.as_ref(), root, bundle, &planned, &[], &dropped_paths);
    if ops.is_empty() && old.as_ref() == Some(&unchanged_state) {
        return Ok(());
    }
    let mut done = |id: &str, detail: Option<String>| {
        if let (Some(d), Some(s)) = (detail, report.steps.iter_mut().find(|s| s.id == id)) {
            s.detail = d;
        }
    };
    apply::transact(
        root,
        "install",
        hook_env(ctx),
        &ops,
        |recorded| {
            Some(next_state(
                old.as_ref(),
                root,
                bundle,
                &planned,
                recorded,
                &dropped_paths,
            ))
        },
        &mut done,
    )?;
    // A rewrite of state.json alone (e.g. a new tool version) is bookkeeping.
    report.changed |= !ops.is_empty();
    Ok(())
}

/// Entries an earlier install placed (they carry a step id) at paths this
/// plan no longer has. Parent directories made along the way carry none and
/// stay while they hold something.
fn dropped_entries<'s>(root: &Root, old: Option<&'s State>, planned: &[Planned]) -> Vec<&'s Entry> {
    let Some(old) = old else {
        return Vec::new();
    };
    let wanted: BTreeSet<String> = planned
        .iter()
        .filter_map(|p| match &p.action {
            Action::File(f) => Some(&f.path),
            Action::Block(b) => Some(&b.path),
            Action::Dir(d) => Some(&d.path),
            _ => None,
        })
        .filter_map(|p| root.resolve(p).ok().map(|r| r.real))
        .collect();
    old.entries
        .iter()
        .filter(|e| !e.meta && e.id.is_some() && !wanted.contains(&e.path))
        .collect()
}

/// The step id of a recorded entry.
fn entry_id(e: &Entry) -> String {
    e.id.clone().unwrap_or_else(|| match e.kind.as_str() {
        "block" => format!("hosts:{}", e.path),
        "dir" => format!("dir:{}", e.path),
        _ => format!("file:{}", e.path),
    })
}

/// Lines of `b`, each with its line end (as `plan::find_block` counts them).
fn lines(b: &[u8]) -> Vec<&[u8]> {
    b.split_inclusive(|c| *c == b'\n').collect()
}

/// How to put one recorded entry back as it was before the first install,
/// or `None` when it already is. Shared by uninstall and by an install that
/// no longer places something an earlier one did (`--no-capture`).
fn undo_entry(root: &Root, e: &Entry, can_chown: bool) -> Result<Option<(&'static str, Op)>> {
    let host = root.resolve(&e.path)?.host;
    let cur = fsops::read_current(&host)?;
    Ok(Some(match (e.kind.as_str(), &e.prior, &cur) {
        (
            "block",
            _,
            Current::File {
                bytes,
                mode,
                uid,
                gid,
            },
        ) => {
            // A block that was there before the first install (written by
            // hand, or by another copy of the tool) is put back as it was;
            // otherwise ours goes. Lines outside it stay as they are now.
            let prior_block = match &e.prior {
                Prior::File { backup, .. } => {
                    let old = apply::read_backup(root, backup)?;
                    plan::find_block(&old)
                        .ok()
                        .flatten()
                        .map(|(s, t)| lines(&old)[s..=t].concat())
                }
                _ => None,
            };
            let new = match (&prior_block, plan::find_block(bytes)) {
                (Some(pb), Ok(Some((s, t)))) => {
                    let l = lines(bytes);
                    let mut out = l[..s].concat();
                    out.extend_from_slice(pb);
                    out.extend(l[t + 1..].concat());
                    out
                }
                _ => {
                    plan::remove_block(bytes).map_err(|err| anyhow::anyhow!("{}: {err}", e.path))?
                }
            };
            if new == *bytes {
                return Ok(None);
            }
            if new.is_empty() && e.prior == Prior::Absent {
                // install created the file for the block alone.
                (
                    "removed (created by install for the istio-vm block)",
                    Op::Remove {
                        path: e.path.clone(),
                    },
                )
            } else {
                (
                    if prior_block.is_some() {
                        "restored the istio-vm block that was there before install"
                    } else {
                        "removed the istio-vm block"
                    },
                    Op::Write {
                        path: e.path.clone(),
                        content: new,
                        mode: *mode,
                        owner: can_chown.then_some((*uid, *gid)),
                    },
                )
            }
        }
        ("block", _, _) => return Ok(None),
        (_, Prior::Absent, Current::Absent) => return Ok(None),
        (_, Prior::Absent, Current::Dir { .. }) => (
            "removed (created by install)",
            Op::Rmdir {
                path: e.path.clone(),
            },
        ),
        (_, Prior::Absent, _) => (
            "removed (created by install)",
            Op::Remove {
                path: e.path.clone(),
            },
        ),
        (
            _,
            Prior::File {
                backup,
                mode,
                uid,
                gid,
            },
            _,
        ) => {
            let bytes = apply::read_backup(root, backup).map_err(|err| {
                anyhow::anyhow!("the backup of {} is unreadable: {err:#}", e.path)
            })?;
            let same = matches!(&cur, Current::File { bytes: b, mode: m, uid: u, gid: g }
                if *b == bytes && m == mode && (!can_chown || (*u, *g) == (*uid, *gid)));
            if same {
                return Ok(None);
            }
            (
                "restored as it was before install",
                Op::Write {
                    path: e.path.clone(),
                    content: bytes,
                    mode: *mode,
                    owner: can_chown.then_some((*uid, *gid)),
                },
            )
        }
        (
            _,
            Prior::Dir { mode, uid, gid },
            Current::Dir {
                mode: m,
                uid: u,
                gid: g,
            },
        ) => {
            if m == mode && (!can_chown || (u, g) == (uid, gid)) {
                return Ok(None);
            }
            (
                "owner and mode restored",
                Op::SetMeta {
                    path: e.path.clone(),
                    mode: *mode,
                    owner: can_chown.then_some((*uid, *gid)),
                },
            )
        }
        (_, Prior::Dir { .. }, _) => return Ok(None),
    }))
}

pub fn uninstall(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new("uninstall");
    let root = Root::new(&ctx.root).map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let _lock = lock::acquire(&root, ctx.config.lock_timeout)?;
    recover_and_tidy(&root, &mut report)?;
    let Some(state) = apply::load_state(&root)? else {
        report.steps.push(Step {
            id: format!("state:{}", layout::STATE_FILE),
            status: StepStatus::Ok,
            detail: "nothing installed".into(),
            diff: None,
        });
        return Ok(report);
    };
    let can_chown = nix::unistd::geteuid().is_root();
    let mut ops: Vec<(String, Op)> = Vec::new();
    let hooks = if root.is_live() {
        uninstall_hooks(&state)
    } else if state.entries.iter().any(|e| e.path == layout::ISTIO_DROPIN) {
        vec![systemd::uninstall_disable_hook()]
    } else {
        Vec::new()
    };
    {
        for h in hooks {
            report.steps.push(Step {
                id: h.id.clone(),
                status: StepStatus::Changed,
                detail: h.detail.clone(),
                diff: None,
            });
            ops.push((h.id.clone(), Op::Hook(h)));
        }
    }
    for e in state.entries.iter().rev().filter(|e| !e.meta) {
        let Some((detail, op)) = undo_entry(&root, e, can_chown)? else {
            continue;
        };
        let id = entry_id(e);
        report.steps.push(Step {
            id: id.clone(),
            status: StepStatus::Changed,
            detail: detail.into(),
            diff: None,
        });
        ops.push((id, op));
    }
    // systemd forgets the removed units after they are gone.
    if root.is_live() && state.entries.iter().any(|e| e.path == layout::ISTIO_DROPIN) {
        let hook = systemd::uninstall_reload_hook();
        report.steps.push(Step {
            id: hook.id.clone(),
            status: StepStatus::Changed,
            detail: hook.detail.clone(),
            diff: None,
        });
        ops.push((hook.id.clone(), Op::Hook(hook)));
    }
    let mut done = |id: &str, detail: Option<String>| {
        if let (Some(d), Some(s)) = (detail, report.steps.iter_mut().find(|s| s.id == id)) {
            s.status = StepStatus::Ok;
            s.detail = d;
        }
    };
    // The commit leaves a tombstone state naming only the bookkeeping
    // directories to remove, so a kill after it is finished by the next run.
    let tomb = apply::tombstone(&state);
    if let Err(e) = apply::transact(
        &root,
        "uninstall",
        hook_env(ctx),
        &ops,
        |_| Some(tomb.clone()),
        &mut done,
    ) {
        return Err(with_failed_steps(e, report));
    }
    apply::finish_uninstall(&root, &tomb)?;
    report.changed = true;
    Ok(report)
}
