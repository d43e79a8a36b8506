//! Recovery and cleanup around a transaction: rolling back a journal an
//! interrupted run left, restoring recorded paths, and the idempotent tidy-up
//! after a commit (pruning backups, finishing an uninstall whose commit
//! landed). Split from `apply/mod.rs`, which keeps the transaction itself.

use super::*;
/// The cleanup after a commit, redone by every run that changes something
/// (after `recover`, under the lock): it is idempotent, so a run killed
/// anywhere in it (or before it) is finished by the next one.
///
/// - Backups no state entry refers to are deleted: those of a committed
///   uninstall, of a token rotation.
/// - An uninstall that committed but did not finish (its state.json names
///   only our bookkeeping directories, see `tombstone`) is finished.
///
/// Nothing else is removed: a directory no record names is not ours, even
/// an empty `/var/lib/istio-vm`.
///
/// Returns a step detail when something was cleaned up.
pub fn tidy(root: &Root) -> Result<Option<String>> {
    let state = load_state(root)?;
    let n = prune_backups(root, state.as_ref())?;
    if let Some(s) = state.as_ref().filter(|s| is_tombstone(s)) {
        finish_uninstall(root, s)?;
        return Ok(Some(format!(
            "finished an interrupted uninstall ({n} leftover backups removed)"
        )));
    }
    Ok((n > 0)
        .then(|| format!("finished the cleanup of an earlier run ({n} leftover backups removed)")))
}

/// The state an uninstall commits: only the bookkeeping directories the
/// first install made, so that the cleanup after the commit (removing
/// them) is redone by the next run if this one is killed.
pub fn tombstone(state: &State) -> State {
    State {
        entries: state.entries.iter().filter(|e| e.meta).cloned().collect(),
        ..state.clone()
    }
}

/// An uninstall committed this state and has not finished.
pub fn is_tombstone(state: &State) -> bool {
    state.entries.iter().all(|e| e.meta)
}

/// Where a directory chain is built before it appears in one rename, or
/// goes in one rename before it is deleted: a kill leaves it only under
/// this name, which the next run removes (`recover`). Runs hold the lock,
/// so none is in use then.
pub(super) fn staging_of(host: &std::path::Path) -> std::path::PathBuf {
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    host.with_file_name(format!(".{name}.istio-vm.staging"))
}

/// Remove a staging directory (ours by its name), if there is one.
pub(super) fn clear_dir(stage: &std::path::Path) -> Result<()> {
    if matches!(fsops::read_current(stage)?, Current::Dir { .. }) {
        std::fs::remove_dir_all(stage).with_context(|| format!("removing {}", stage.display()))?;
        fsops::sync_parent(stage)?;
    }
    Ok(())
}

/// Remove the staging directories a killed run left along our bookkeeping
/// paths.
pub(super) fn clear_staging(root: &Root, books: &Books) -> Result<()> {
    let mut dirs = BTreeSet::new();
    for p in [&books.journal, &books.state, &books.tx_dir("-")] {
        let mut d = std::path::Path::new(p).parent();
        while let Some(x) = d.filter(|x| *x != std::path::Path::new("/")) {
            dirs.insert(x.to_path_buf());
            d = x.parent();
        }
    }
    for d in dirs {
        clear_dir(&staging_of(&root.host(&d.to_string_lossy())))?;
    }
    Ok(())
}

/// Whether the tree at `host` holds nothing but our bookkeeping: the
/// journal, state.json, backups, and the directories leading to them.
pub(super) fn only_books(root: &Root, books: &Books, host: &std::path::Path) -> Result<bool> {
    let ours: Vec<std::path::PathBuf> = [&books.journal, &books.state]
        .into_iter()
        .flat_map(|p| {
            let h = root.host(p);
            [fsops::temp_of(&h), h]
        })
        .collect();
    let backup = root.host(&books.backup_dir);
    let leads_to = |p: &std::path::Path| {
        ours.iter().any(|o| o.starts_with(p)) || backup.starts_with(p) || p.starts_with(&backup)
    };
    let m =
        std::fs::symlink_metadata(host).with_context(|| format!("reading {}", host.display()))?;
    if !m.is_dir() {
        return Ok(ours.iter().any(|o| o == host) || host.starts_with(&backup));
    }
    if !leads_to(host) {
        return Ok(false);
    }
    if host.starts_with(&backup) {
        return Ok(true);
    }
    for e in std::fs::read_dir(host).with_context(|| format!("reading {}", host.display()))? {
        if !only_books(root, books, &e?.path())? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Undo our bookkeeping directories (the `meta` entries) once everything
/// else is undone. `pin` (the journal, or an uninstall's tombstone
/// state.json) names them until the last step, so a kill anywhere in here
/// is redone by the next run:
///
/// 1. created directories that do not hold the pin go, deepest first;
/// 2. pre-existing ones get their mode and owner back;
/// 3. the pin and the created directories holding it go in one rename of
///    the highest one that holds nothing but our bookkeeping; where none
///    does (something else lives there), the pin goes, then whichever of
///    them is empty.
pub(super) fn unwind(
    root: &Root,
    books: &Books,
    meta: &[Entry],
    pin: &str,
    can_chown: bool,
) -> Result<()> {
    let depth = |e: &&Entry| e.path.matches('/').count();
    let created: Vec<&Entry> = meta
        .iter()
        .filter(|e| e.kind == "dir" && e.prior == Prior::Absent)
        .collect();
    let holds_pin = |e: &&Entry| std::path::Path::new(pin).starts_with(&e.path);
    let mut others: Vec<&Entry> = created.iter().copied().filter(|e| !holds_pin(e)).collect();
    others.sort_by_key(|e| std::cmp::Reverse(depth(e)));
    for e in others {
        let host = root.host(&e.path);
        if books.is_transient(&e.path) {
            remove_tree(&host)?;
        } else {
            fsops::rmdir_if_empty(&host, &fsops::Syncer::now())?;
        }
    }
    for e in meta.iter().filter(|e| matches!(e.prior, Prior::Dir { .. })) {
        restore(root, e, can_chown)?;
    }
    let mut holders: Vec<&Entry> = created.iter().copied().filter(holds_pin).collect();
    holders.sort_by_key(depth);
    for top in &holders {
        let host = root.host(&top.path);
        match fsops::read_current(&host)? {
            Current::Absent => return Ok(()),
            Current::Dir { .. } if only_books(root, books, &host)? => {
                let stage = staging_of(&host);
                clear_dir(&stage)?;
                fsops::rename_dir(&host, &stage)?;
                return clear_dir(&stage);
            }
            _ => {}
        }
    }
    let pin_host = root.host(pin);
    fsops::remove_file(&fsops::temp_of(&pin_host), &fsops::Syncer::now())?;
    fsops::remove_file(&pin_host, &fsops::Syncer::now())?;
    for e in holders.iter().rev() {
        fsops::rmdir_if_empty(&root.host(&e.path), &fsops::Syncer::now())?;
    }
    Ok(())
}

/// Delete backup directories no state entry refers to; returns how many.
pub(super) fn prune_backups(root: &Root, keep: Option<&State>) -> Result<usize> {
    let referenced: BTreeSet<String> = keep
        .map(|s| {
            s.entries
                .iter()
                .filter_map(|e| match &e.prior {
                    Prior::File { backup, .. } => backup.split('/').next().map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let dir = root.resolve(layout::BACKUP_DIR)?;
    let Ok(rd) = std::fs::read_dir(&dir.host) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !referenced.contains(&name) {
            remove_tree(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Remove a backup directory tree (only ever ours, under the backup dir).
pub(super) fn remove_tree(p: &std::path::Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("removing backup {}", p.display()))
        }
        Ok(_) => fsops::remove_file(p, &fsops::Syncer::now()),
        Err(_) => Ok(()),
    }
}

pub fn read_backup(root: &Root, backup: &str) -> Result<Vec<u8>> {
    let host = root.host(&Books::of(root)?.backup(backup));
    match fsops::read_current(&host)? {
        Current::File { bytes, .. } => Ok(bytes),
        _ => bail!(
            "backup {} is missing; the prior content cannot be restored",
            host.display()
        ),
    }
}

/// Restore one entry to its prior state.
pub(super) fn restore(root: &Root, e: &Entry, can_chown: bool) -> Result<()> {
    let host = root.host(&e.path);
    // A temp file a killed run left behind.
    fsops::remove_file(&fsops::temp_of(&host), &fsops::Syncer::now())?;
    let cur = fsops::read_current(&host)?;
    match &e.prior {
        Prior::Absent => match cur {
            Current::Absent => {}
            Current::Dir { .. } => {
                fsops::rmdir_if_empty(&host, &fsops::Syncer::now())?;
            }
            _ => fsops::remove_file(&host, &fsops::Syncer::now())?,
        },
        Prior::File {
            backup,
            mode,
            uid,
            gid,
        } => {
            let bytes = read_backup(root, backup)?;
            let same = matches!(&cur, Current::File { bytes: b, mode: m, uid: u, gid: g }
                if *b == bytes && m == mode && (!can_chown || (*u, *g) == (*uid, *gid)));
            if !same {
                fsops::write_atomic(
                    &host,
                    &bytes,
                    *mode,
                    can_chown.then_some((*uid, *gid)),
                    "restore",
                    &fsops::Syncer::now(),
                )?;
            }
        }
        Prior::Dir { mode, uid, gid } => match cur {
            Current::Dir {
                mode: m,
                uid: u,
                gid: g,
            } => {
                if m != *mode || (can_chown && (u, g) != (*uid, *gid)) {
                    fsops::set_dir_meta(&host, *mode, can_chown.then_some((*uid, *gid)))?;
                }
            }
            Current::Absent => fsops::mkdir(
                &host,
                *mode,
                can_chown.then_some((*uid, *gid)),
                &fsops::Syncer::now(),
            )?,
            _ => bail!(
                "{} should be a directory again; move away what is there",
                e.path
            ),
        },
    }
    Ok(())
}

pub(super) fn rollback_entries(
    root: &Root,
    txid: &str,
    command: &str,
    entries: &[Entry],
    can_chown: bool,
) -> Result<()> {
    let mut errors = Vec::new();
    for e in entries.iter().rev().filter(|e| !e.meta) {
        if let Err(err) = restore(root, e, can_chown) {
            errors.push(format!("{}: {err:#}", e.path));
        }
    }
    if !errors.is_empty() {
        // Keep the journal and backups: the next run retries.
        bail!("rollback incomplete: {}", errors.join("; "));
    }
    let books = Books::of(root)?;
    let meta: Vec<Entry> = entries.iter().filter(|e| e.meta).cloned().collect();
    // Only our bookkeeping is left to undo: the journal says so first, so
    // a kill from here on redoes just that (the backups may be gone then).
    if meta.len() < entries.len() {
        let j = Journal {
            txid: txid.into(),
            command: command.into(),
            entries: meta.clone(),
        };
        fsops::write_atomic(
            &root.host(&books.journal),
            &serde_json::to_vec_pretty(&j)?,
            0o600,
            can_chown.then_some((0, 0)),
            "rollback",
            &fsops::Syncer::now(),
        )
        .context("writing the journal")?;
    }
    remove_tree(&root.host(&books.tx_dir(txid)))?;
    unwind(root, &books, &meta, &books.journal, can_chown)
}

/// Roll back a run that was interrupted (its journal is still there).
/// Returns a step detail when something was recovered.
pub fn recover(root: &Root) -> Result<Option<String>> {
    clear_staging(root, &Books::of(root)?)?;
    let r = root.resolve(JOURNAL)?;
    let tmp = fsops::temp_of(&r.host);
    let bytes = match fsops::read_current(&r.host)? {
        Current::File { bytes, .. } => bytes,
        Current::Absent => match fsops::read_current(&tmp)? {
            // Killed while writing the first journal: its temp file, if
            // complete, names what was created.
            Current::File { bytes, .. } => {
                if serde_json::from_slice::<Journal>(&bytes).is_err() {
                    fsops::remove_file(&tmp, &fsops::Syncer::now())?;
                    return Ok(None);
                }
                bytes
            }
            _ => return Ok(None),
        },
        _ => bail!("{} is not a regular file; remove it", r.real),
    };
    let j: Journal = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is corrupt; check the files it lists by hand, then remove it",
            r.real
        )
    })?;
    rollback_entries(root, &j.txid, &j.command, &j.entries, euid_root())
        .with_context(|| format!("rolling back the interrupted {} ({})", j.command, j.txid))?;
    Ok(Some(format!(
        "rolled back an interrupted {} ({} paths)",
        j.command,
        j.entries.iter().filter(|e| !e.meta).count()
    )))
}
