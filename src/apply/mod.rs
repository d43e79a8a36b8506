//! The only writer: atomic files, ownership, journal and rollback, lock, live
//! hooks. Executes a plan (`plan::evaluate`) as one transaction:
//!
//! 1. lock; roll back a journal left by an interrupted run;
//! 2. record the prior state of every path to be touched (bytes, mode, owner
//!    or absent, plus parent directories that will be created), back it up
//!    under `/var/lib/istio-vm/backup/<txid>/` (0700/0600) and write the
//!    journal `/var/lib/istio-vm/journal.json` (no directory exists before a
//!    journal names it: a missing chain appears in one rename with its
//!    first journal inside);
//! 3. apply the ops, then write `state.json`;
//! 4. commit by removing the journal. Any error before that restores every
//!    recorded path and returns `Failure::RolledBack` (exit 3).

use std::collections::BTreeSet;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Failure;
use crate::layout;
use crate::plan::{Current, HookEnv, Op};

pub mod cloudinit;
pub mod fsops;
pub mod lock;
pub mod systemd;
pub mod user;

/// The writer works on the one view of the VM's filesystem.
pub use crate::sysroot::{Resolved, Sysroot as Root};

pub use crate::layout::JOURNAL;

/// Test-only fault injection (cargo feature `failpoints`):
/// `ISTIO_VM_FAILPOINT=<name>` fails there, `<name>:abort` dies there as a
/// `kill -9` would (no cleanup, no unwinding).
pub fn failpoint(name: &str) -> Result<()> {
    #[cfg(feature = "failpoints")]
    if let Ok(v) = std::env::var("ISTIO_VM_FAILPOINT") {
        if v == name {
            bail!("failpoint {name}");
        }
        if v.strip_suffix(":abort") == Some(name) {
            std::process::abort();
        }
    }
    let _ = name;
    Ok(())
}

pub fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// What a path was before we touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Prior {
    Absent,
    File {
        /// `<txid>/<n>` under the backup directory.
        backup: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// One path in the journal or in state.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Resolved path inside the root (no symlinks among its parents).
    pub path: String,
    /// Step id of the action that placed it, if any (`file:/var/run/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `file`, `dir` or `block` (our block inside someone else's file).
    pub kind: String,
    /// sha256 of what we installed (files we own, not secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub prior: Prior,
    /// Our own bookkeeping directories (state dir, backups).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub meta: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub txid: String,
    pub command: String,
    pub entries: Vec<Entry>,
}

/// What is installed: enough to undo it exactly. Never holds token bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub tool_version: String,
    pub bundle_sha256: String,
    pub entries: Vec<Entry>,
}

/// A step result as the executor reports it.
#[derive(Debug, Clone)]
pub struct Done {
    pub id: String,
    pub detail: String,
}

/// Our bookkeeping paths as resolved inside the root. A tree's `/var/lib`
/// may be a link (`ROOT/var/lib -> /data/varlib`): it is followed inside the
/// root as a chroot would, like every other parent, so the journal, state
/// and backups live where the VM will see them and the writer (which never
/// follows a link) is handed paths without one.
#[derive(Debug, Clone)]
pub struct Books {
    pub journal: String,
    pub state: String,
    pub backup_dir: String,
}

impl Books {
    pub fn of(root: &Root) -> Result<Books> {
        Ok(Books {
            journal: root.resolve(JOURNAL)?.real,
            state: root.resolve(layout::STATE_FILE)?.real,
            backup_dir: root.resolve(layout::BACKUP_DIR)?.real,
        })
    }

    /// The backup directory of one transaction.
    pub fn tx_dir(&self, txid: &str) -> String {
        format!("{}/{txid}", self.backup_dir)
    }

    /// A backup file (`<txid>/<n>`, as a `Prior::File` names it).
    pub fn backup(&self, name: &str) -> String {
        format!("{}/{name}", self.backup_dir)
    }

    /// Journal, state or backups: not part of what is installed.
    pub fn is_transient(&self, real: &str) -> bool {
        real == self.journal
            || real == self.state
            || real.starts_with(&format!("{}/", self.backup_dir))
    }
}

fn new_txid() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

fn euid_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Load state.json, if any.
pub fn load_state(root: &Root) -> Result<Option<State>> {
    let r = root.resolve(layout::STATE_FILE)?;
    match fsops::read_current(&r.host)? {
        Current::Absent => Ok(None),
        Current::File { bytes, .. } => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is corrupt; restore it from a backup", r.real)),
        _ => bail!("{} is not a regular file", r.real),
    }
}

pub fn state_bytes(s: &State) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(s).expect("state serializes");
    v.push(b'\n');
    v
}

/// A transaction in progress.
pub struct Tx<'a> {
    root: &'a Root,
    pub txid: String,
    command: String,
    can_chown: bool,
    pub entries: Vec<Entry>,
    seen: BTreeSet<String>,
    /// Backup bytes waiting to be written, by entry index.
    pending: Vec<(String, Vec<u8>)>,
    hooks_run: Vec<crate::plan::Hook>,
    hook_env: HookEnv,
    started: bool,
    /// The full journal is on disk: ops may have run.
    journaled: bool,
    /// Directory fsyncs of the ops, done once each before commit.
    sync: fsops::Syncer,
}

impl<'a> Tx<'a> {
    pub fn new(root: &'a Root, command: &str, hook_env: HookEnv) -> Tx<'a> {
        Tx {
            root,
            txid: new_txid(),
            command: command.into(),
            can_chown: euid_root(),
            entries: Vec::new(),
            seen: BTreeSet::new(),
            pending: Vec::new(),
            hooks_run: Vec::new(),
            hook_env,
            started: false,
            journaled: false,
            sync: fsops::Syncer::deferred(),
        }
    }

    /// Record the prior state of `real` (once).
    fn record(&mut self, real: &str, kind: &str, meta: bool) -> Result<()> {
        if !self.seen.insert(real.to_string()) {
            return Ok(());
        }
        let host = self.root.host(real);
        let prior = match fsops::read_current(&host)? {
            Current::Absent => Prior::Absent,
            Current::Dir { mode, uid, gid } => Prior::Dir { mode, uid, gid },
            Current::File {
                bytes,
                mode,
                uid,
                gid,
            } => {
                let backup = format!("{}/{}", self.txid, self.pending.len());
                self.pending.push((backup.clone(), bytes));
                Prior::File {
                    backup,
                    mode,
                    uid,
                    gid,
                }
            }
            Current::Symlink => {
                bail!("refusing to touch {real}: it is a symbolic link (never followed); remove it")
            }
            Current::Other => bail!("refusing to touch {real}: not a regular file or directory"),
        };
        self.entries.push(Entry {
            path: real.to_string(),
            id: None,
            kind: kind.into(),
            sha256: None,
            prior,
            meta,
        });
        Ok(())
    }

    /// The parent directories of `real` that do not exist yet, deepest first.
    fn missing_parents(&self, real: &str) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        let mut p = std::path::Path::new(real).parent();
        while let Some(d) = p {
            let ds = d.to_string_lossy().to_string();
            if ds == "/" || !matches!(fsops::read_current(&self.root.host(&ds))?, Current::Absent) {
                break;
            }
            missing.push(ds);
            p = d.parent();
        }
        Ok(missing)
    }

    /// Record `real` and every missing parent directory (parents first).
    fn record_with_parents(&mut self, real: &str, kind: &str, meta: bool) -> Result<()> {
        let missing = self.missing_parents(real)?;
        for d in missing.iter().rev() {
            self.record(d, "dir", meta)?;
        }
        self.record(real, kind, meta)
    }

    fn op_path(op: &Op) -> Option<(&str, &'static str)> {
        match op {
            Op::Mkdir { path, .. } | Op::SetMeta { path, .. } | Op::Rmdir { path } => {
                Some((path, "dir"))
            }
            Op::Write { path, .. } | Op::Remove { path } => Some((path, "file")),
            Op::CreateUser | Op::Hook(_) => None,
        }
    }

    /// Record every path the ops touch, write the backups and the journal.
    /// Nothing has been changed before this returns.
    pub fn begin(&mut self, ops: &[(String, Op)], extra: &[String]) -> Result<()> {
        let books = Books::of(self.root)?;
        let bdir = books.tx_dir(&self.txid);
        // Our bookkeeping directories come first, so they are undone last.
        self.record_with_parents(&bdir, "dir", true)?;
        self.record(&books.journal, "file", true)?;
        for (_, op) in ops {
            if let Some((path, kind)) = Self::op_path(op) {
                let r = self.root.resolve(path)?;
                self.record_with_parents(&r.real, kind, false)?;
            }
        }
        for path in extra {
            let r = self.root.resolve(path)?;
            self.record_with_parents(&r.real, "file", false)?;
        }
        failpoint("backup")?;
        let owner = self.can_chown.then_some((0, 0));
        // The backup directory chain this run makes (parents first).
        let chain: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.meta && e.kind == "dir" && e.prior == Prior::Absent)
            .cloned()
            .collect();
        let mode = |e: &Entry| {
            if e.path.starts_with(&books.backup_dir) {
                0o700
            } else {
                0o755
            }
        };
        // A first journal names only those directories, so a crash while
        // backing up still leaves a way back. It must exist before any of
        // them does: a directory made without a journal naming it would be
        // taken for the VM's own by the next run (issue #16.4).
        let meta: Vec<Entry> = self.entries.iter().filter(|e| e.meta).cloned().collect();
        self.started = true;
        match chain
            .first()
            .filter(|top| std::path::Path::new(&books.journal).starts_with(&top.path))
        {
            // The journal's own directory is missing: the chain is built
            // under a staging name with the journal inside and appears in
            // one rename (a kill before leaves only the staging directory,
            // which `recover` removes).
            Some(top) => {
                let top_host = self.root.host(&top.path);
                let stage = staging_of(&top_host);
                clear_dir(&stage)?;
                let inside = |real: &str| {
                    stage.join(
                        real.strip_prefix(top.path.as_str())
                            .unwrap_or(real)
                            .trim_start_matches('/'),
                    )
                };
                let built = (|| {
                    for e in &chain {
                        fsops::mkdir(&inside(&e.path), mode(e), owner, &fsops::Syncer::now())?;
                    }
                    self.write_journal_at(&inside(&books.journal), &meta, "prepare")?;
                    fsops::rename_dir(&stage, &top_host)
                })();
                if let Err(e) = built {
                    // Nothing but the staging directory exists: it goes.
                    clear_dir(&stage)?;
                    return Err(e);
                }
            }
            None => {
                self.write_journal(&meta, "prepare")?;
                for e in &chain {
                    fsops::mkdir(
                        &self.root.host(&e.path),
                        mode(e),
                        owner,
                        &fsops::Syncer::now(),
                    )?;
                }
            }
        }
        for (name, bytes) in std::mem::take(&mut self.pending) {
            let host = self.root.host(&books.backup(&name));
            fsops::write_atomic(&host, &bytes, 0o600, owner, "backup", &fsops::Syncer::now())
                .context("backing up before the change")?;
        }
        let all = self.entries.clone();
        self.write_journal(&all, "journal")?;
        self.journaled = true;
        failpoint("journal")
    }

    fn write_journal(&self, entries: &[Entry], failpoint: &str) -> Result<()> {
        self.write_journal_at(&self.root.resolve(JOURNAL)?.host, entries, failpoint)
    }

    fn write_journal_at(
        &self,
        host: &std::path::Path,
        entries: &[Entry],
        failpoint: &str,
    ) -> Result<()> {
        let j = Journal {
            txid: self.txid.clone(),
            command: self.command.clone(),
            entries: entries.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&j)?;
        let owner = self.can_chown.then_some((0, 0));
        fsops::write_atomic(host, &bytes, 0o600, owner, failpoint, &fsops::Syncer::now())
            .context("writing the journal")
    }

    /// Create missing parents of `real` (recorded by `begin`).
    fn ensure_parents(&self, real: &str) -> Result<()> {
        let missing = self.missing_parents(real)?;
        let owner = self.can_chown.then_some((0, 0));
        for d in missing.iter().rev() {
            fsops::mkdir(&self.root.host(d), 0o755, owner, &self.sync)?;
        }
        Ok(())
    }

    /// Apply one op. Returns a detail override, if any.
    pub fn exec(&mut self, id: &str, op: &Op) -> Result<Option<String>> {
        failpoint(id)?;
        match op {
            Op::CreateUser => bail!("user creation runs before the transaction"),
            Op::Mkdir { path, mode, owner } => {
                let r = self.root.resolve(path)?;
                self.ensure_parents(&r.real)?;
                match fsops::read_current(&r.host)? {
                    Current::Absent => fsops::mkdir(&r.host, *mode, *owner, &self.sync)?,
                    Current::Dir { .. } => fsops::set_dir_meta(&r.host, *mode, *owner)?,
                    _ => bail!("{path} is not a directory; move it away"),
                }
            }
            Op::SetMeta { path, mode, owner } => {
                let r = self.root.resolve(path)?;
                fsops::set_dir_meta(&r.host, *mode, *owner)?;
            }
            Op::Write {
                path,
                content,
                mode,
                owner,
            } => {
                let r = self.root.resolve(path)?;
                self.ensure_parents(&r.real)?;
                fsops::write_atomic(&r.host, content, *mode, *owner, id, &self.sync)
                    .with_context(|| format!("writing {path}"))?;
            }
            Op::Remove { path } => {
                let r = self.root.resolve(path)?;
                fsops::remove_file(&r.host, &self.sync)?;
            }
            Op::Rmdir { path } => {
                let r = self.root.resolve(path)?;
                if !fsops::rmdir_if_empty(&r.host, &self.sync)? {
                    return Ok(Some(
                        "kept: not empty (holds files istio-vm did not place)".into(),
                    ));
                }
            }
            Op::Hook(h) => {
                (h.run)(&self.hook_env).with_context(|| h.id.clone())?;
                self.hooks_run.push(h.clone());
            }
        }
        Ok(None)
    }

    /// Commit: the journal goes, and backups no longer referenced by
    /// `keep` (the new state) are deleted.
    pub fn commit(self, keep: Option<&State>) -> Result<()> {
        fsops::remove_file(&self.root.resolve(JOURNAL)?.host, &fsops::Syncer::now())?;
        prune_backups(self.root, keep).map(|_| ())
    }

    /// Undo everything recorded, newest first.
    pub fn rollback(mut self) -> Result<()> {
        for h in std::mem::take(&mut self.hooks_run).iter().rev() {
            if let Some(undo) = h.undo {
                undo(&self.hook_env).with_context(|| format!("undoing {}", h.id))?;
            }
        }
        if !self.started {
            return Ok(());
        }
        let entries: Vec<Entry> = if self.journaled {
            self.entries.clone()
        } else {
            // Nothing but our own directories and backups exists yet.
            self.entries.iter().filter(|e| e.meta).cloned().collect()
        };
        rollback_entries(
            self.root,
            &self.txid,
            &self.command,
            &entries,
            self.can_chown,
        )
    }
}

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
fn staging_of(host: &std::path::Path) -> std::path::PathBuf {
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    host.with_file_name(format!(".{name}.istio-vm.staging"))
}

/// Remove a staging directory (ours by its name), if there is one.
fn clear_dir(stage: &std::path::Path) -> Result<()> {
    if matches!(fsops::read_current(stage)?, Current::Dir { .. }) {
        std::fs::remove_dir_all(stage).with_context(|| format!("removing {}", stage.display()))?;
        fsops::sync_parent(stage)?;
    }
    Ok(())
}

/// Remove the staging directories a killed run left along our bookkeeping
/// paths.
fn clear_staging(root: &Root, books: &Books) -> Result<()> {
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
fn only_books(root: &Root, books: &Books, host: &std::path::Path) -> Result<bool> {
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
fn unwind(root: &Root, books: &Books, meta: &[Entry], pin: &str, can_chown: bool) -> Result<()> {
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
fn prune_backups(root: &Root, keep: Option<&State>) -> Result<usize> {
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
fn remove_tree(p: &std::path::Path) -> Result<()> {
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
fn restore(root: &Root, e: &Entry, can_chown: bool) -> Result<()> {
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

fn rollback_entries(
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

/// Run ops in a transaction. `finish` builds the state to write from the
/// recorded entries (None: remove state.json). On error everything is rolled
/// back and the error is a `Failure::RolledBack`.
pub fn transact(
    root: &Root,
    command: &str,
    hook_env: HookEnv,
    ops: &[(String, Op)],
    finish: impl FnOnce(&[Entry]) -> Option<State>,
    on_done: &mut dyn FnMut(&str, Option<String>),
) -> Result<Option<State>> {
    let mut tx = Tx::new(root, command, hook_env);
    let mut failed_at: Option<String> = None;
    let result = (|| -> Result<Option<State>> {
        tx.begin(ops, &[layout::STATE_FILE.to_string()])?;
        for (id, op) in ops {
            failed_at = Some(id.clone());
            let d = tx.exec(id, op)?;
            on_done(id, d);
        }
        failed_at = Some("state".into());
        failpoint("state")?;
        let state = finish(&tx.entries);
        let st = root.resolve(layout::STATE_FILE)?;
        match &state {
            Some(s) => {
                tx.ensure_parents(&st.real)?;
                fsops::write_atomic(
                    &st.host,
                    &state_bytes(s),
                    0o644,
                    tx.can_chown.then_some((0, 0)),
                    "state",
                    &tx.sync,
                )
                .context("writing state.json")?
            }
            None => fsops::remove_file(&st.host, &tx.sync)?,
        }
        // Everything this run changed reaches the disk before the journal
        // that could undo it goes.
        tx.sync.flush()?;
        failed_at = Some("commit".into());
        failpoint("commit")?;
        Ok(state)
    })();
    match result {
        Ok(state) => {
            tx.commit(state.as_ref()).map_err(commit_error)?;
            Ok(state)
        }
        Err(e) => {
            let at = failed_at
                .as_ref()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default();
            match tx.rollback() {
                Ok(()) => Err(Failure::RolledBack {
                    message: format!("{command} failed{at}: {e:#}"),
                    step: failed_at,
                }
                .into()),
                Err(re) => Err(anyhow!(
                    "{command} failed{at}: {e:#}; and the rollback failed: {re:#}. \
                     The journal {JOURNAL} is kept; the next run retries the rollback"
                )),
            }
        }
    }
}

fn commit_error(e: anyhow::Error) -> anyhow::Error {
    // The journal removal itself failed: the next run will roll back.
    anyhow!("committing failed: {e:#}; the next run rolls this change back and redoes it")
}

/// After an uninstall committed its tombstone state: drop every backup,
/// then our bookkeeping directories if install created them (and they hold
/// nothing else), state.json last (see `unwind`).
pub fn finish_uninstall(root: &Root, state: &State) -> Result<()> {
    prune_backups(root, None)?;
    let books = Books::of(root)?;
    let meta: Vec<Entry> = state.entries.iter().filter(|e| e.meta).cloned().collect();
    unwind(root, &books, &meta, &books.state, euid_root())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Hook;

    fn env(root: &std::path::Path) -> HookEnv {
        HookEnv {
            root: root.to_path_buf(),
            config: crate::config::Config::default(),
        }
    }

    fn mark(e: &HookEnv) -> Result<()> {
        std::fs::write(e.root.join("hook-ran"), "yes")?;
        Ok(())
    }

    fn unmark(e: &HookEnv) -> Result<()> {
        std::fs::remove_file(e.root.join("hook-ran"))?;
        Ok(())
    }

    fn fail(_: &HookEnv) -> Result<()> {
        bail!("service did not start")
    }

    fn hook(id: &str, run: fn(&HookEnv) -> Result<()>) -> Hook {
        Hook {
            id: id.into(),
            detail: String::new(),
            run,
            undo: Some(unmark),
            after_change_of: Vec::new(),
        }
    }

    fn write(path: &str) -> (String, Op) {
        (
            format!("file:{path}"),
            Op::Write {
                path: path.into(),
                content: b"unit\n".to_vec(),
                mode: 0o644,
                owner: None,
            },
        )
    }

    #[test]
    fn a_failing_hook_undoes_earlier_hooks_and_files() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path()).unwrap();
        let ops = vec![
            write("/etc/systemd/system/x.service"),
            ("hook:mark".into(), Op::Hook(hook("hook:mark", mark))),
            ("hook:start".into(), Op::Hook(hook("hook:start", fail))),
        ];
        let e = transact(
            &root,
            "install",
            env(t.path()),
            &ops,
            |_| None,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(
            e.downcast_ref::<Failure>(),
            Some(Failure::RolledBack { .. })
        ));
        assert!(format!("{e:#}").contains("service did not start"));
        assert!(!t.path().join("hook-ran").exists(), "undo ran");
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "tree empty again"
        );
    }

    #[test]
    fn hooks_run_after_files() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path()).unwrap();
        let ops = vec![
            write("/etc/systemd/system/x.service"),
            ("hook:mark".into(), Op::Hook(hook("hook:mark", mark))),
        ];
        let mut seen = Vec::new();
        transact(
            &root,
            "install",
            env(t.path()),
            &ops,
            |_| None,
            &mut |id, _| seen.push(id.to_string()),
        )
        .unwrap();
        assert_eq!(seen, ["file:/etc/systemd/system/x.service", "hook:mark"]);
        assert!(t.path().join("hook-ran").exists());
        assert!(t.path().join("etc/systemd/system/x.service").exists());
    }
}
