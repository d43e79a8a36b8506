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
mod recover;

use recover::{clear_dir, prune_backups, rollback_entries, staging_of, unwind};
pub use recover::{is_tombstone, read_backup, recover, tidy, tombstone};
pub mod systemd;
pub mod user;

/// The writer works on the one view of the VM's filesystem.
pub use crate::sysroot::{Resolved, Sysroot as Root};

pub use crate::layout::JOURNAL;

/// The journal kind of a symlink a hook may create ([`crate::plan::Hook`]'s
/// `creates`): rolled back like any path the run created, but not kept in
/// state.json, since the hook's own undo (`systemctl disable`) removes it
/// and an administrator may remove it the usual way.
pub const LINK: &str = "link";

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
        for (_, op) in ops {
            if let Op::Hook(h) = op {
                for path in &h.creates {
                    let r = self.root.resolve(path)?;
                    if fsops::read_current(&r.host)? != Current::Symlink {
                        self.record_with_parents(&r.real, LINK, false)?;
                    }
                }
            }
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
            creates: Vec::new(),
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
