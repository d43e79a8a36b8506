//! One run at a time: an exclusive flock on `/run/lock/istio-vm.lock`
//! (under the root). A second run waits up to `lock_timeout`, then sees the
//! first run's result and has nothing left to do.
//!
//! Under `--root` (an image, a chroot) the run creates nothing for its lock:
//! it locks the root directory itself, and `/run/lock/istio-vm.lock` too
//! only where the tree already has `/run/lock` (a run inside a chroot of the
//! same tree takes that one), removing that file when it ends. Creating
//! `/run/lock` (or `/run`) there would leave them behind after a `kill -9`
//! with nothing saying they were ours (issue #16.4).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg, OFlag};

use super::Root;
use crate::layout;

pub struct Lock {
    _flock: Option<Flock<File>>,
    /// Under `--root`: the lock on the root directory.
    _tree: Option<Flock<File>>,
    /// Under `--root`, the lock file goes when the run ends: an image must
    /// not carry it, and uninstall must leave the tree as it was.
    cleanup: Option<PathBuf>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Still holding the lock: a waiter that opened the old file sees
        // it unlinked after it gets the lock, and retries (see `take`).
        if let Some(file) = self.cleanup.take() {
            let _ = std::fs::remove_file(&file);
        }
    }
}

/// A read-only tree cannot change under us, and nothing can be created
/// there: no lock is needed (a run that has to change something fails at
/// its first write, with the path named).
fn read_only(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EROFS)
}

/// Take the lock, creating the lock file (and, live, `/run/lock`) if
/// needed.
pub fn acquire(root: &Root, timeout: Duration) -> Result<Lock> {
    let deadline = Instant::now() + timeout;
    let tree = if root.is_live() {
        None
    } else {
        Some(lock_tree(
            root,
            FlockArg::LockExclusiveNonblock,
            (deadline, timeout),
        )?)
    };
    loop {
        let r = root.resolve(layout::LOCK_FILE)?;
        if let Some(parent) = r.host.parent() {
            if tree.is_some() {
                if !parent.is_dir() {
                    return Ok(unlocked(tree));
                }
            } else {
                match std::fs::create_dir_all(parent) {
                    Ok(()) => {}
                    Err(e) if read_only(&e) => return Ok(unlocked(tree)),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("creating lock directory {}", parent.display())
                        });
                    }
                }
            }
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&r.host)
        {
            Ok(f) => f,
            Err(e) if read_only(&e) => match open_read_only(&r.host)? {
                // flock works on a read-only descriptor: a writable mount
                // of the same tree elsewhere is still excluded.
                Some(f) => {
                    let mut l = take(
                        f,
                        FlockArg::LockSharedNonblock,
                        (deadline, timeout),
                        &r,
                        None,
                    )?;
                    l._tree = tree;
                    return Ok(l);
                }
                None => return Ok(unlocked(tree)),
            },
            // Removed by the run that held it, between our mkdir and open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("opening lock file {}", r.host.display()));
            }
        };
        let cleanup = tree.is_some().then(|| r.host.clone());
        match take(
            file,
            FlockArg::LockExclusiveNonblock,
            (deadline, timeout),
            &r,
            cleanup,
        ) {
            Err(e) if e.is::<Stale>() => continue,
            Ok(mut l) => {
                l._tree = tree;
                return Ok(l);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Lock the root directory of a `--root` tree (a read-only descriptor is
/// enough for flock, so a read-only tree is locked too).
fn lock_tree(
    root: &Root,
    arg: FlockArg,
    (deadline, timeout): (Instant, Duration),
) -> Result<Flock<File>> {
    let dir = root.dir();
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(dir)
        .with_context(|| format!("opening {} to lock it", dir.display()))?;
    loop {
        match Flock::lock(file, arg) {
            Ok(f) => return Ok(f),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    bail!(
                        "another istio-vm run holds {} for over {:?}; wait for it \
                         or raise lock_timeout",
                        dir.display(),
                        timeout
                    );
                }
                file = f;
                // flock has no timed wait; poll briefly.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", dir.display())),
        }
    }
}

fn unlocked(tree: Option<Flock<File>>) -> Lock {
    Lock {
        _flock: None,
        _tree: tree,
        cleanup: None,
    }
}

fn open_read_only(host: &Path) -> Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(host)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening lock file {}", host.display())),
    }
}

/// A shared lock for `--check`, only if the lock file already exists (a
/// check run never creates anything).
pub fn acquire_shared(root: &Root, timeout: Duration) -> Result<Option<Lock>> {
    let deadline = Instant::now() + timeout;
    let tree = if root.is_live() {
        None
    } else {
        Some(lock_tree(
            root,
            FlockArg::LockSharedNonblock,
            (deadline, timeout),
        )?)
    };
    loop {
        let r = root.resolve(layout::LOCK_FILE)?;
        let Some(file) = open_read_only(&r.host)? else {
            return Ok(tree.map(|t| unlocked(Some(t))));
        };
        match take(
            file,
            FlockArg::LockSharedNonblock,
            (deadline, timeout),
            &r,
            None,
        ) {
            Err(e) if e.is::<Stale>() => continue,
            Ok(mut l) => {
                l._tree = tree;
                return Ok(Some(l));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The lock was taken on a file another run has removed meanwhile.
#[derive(Debug)]
struct Stale;

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the lock file was replaced")
    }
}

impl std::error::Error for Stale {}

fn take(
    mut file: File,
    arg: FlockArg,
    (deadline, timeout): (Instant, Duration),
    r: &crate::sysroot::Resolved,
    cleanup: Option<PathBuf>,
) -> Result<Lock> {
    let shown = &r.real;
    loop {
        match Flock::lock(file, arg) {
            Ok(f) => {
                // The holder before us may have removed the file (under
                // --root it does): a lock on an unlinked file excludes no
                // one who opens the path afresh.
                let held = f.metadata()?;
                match std::fs::symlink_metadata(&r.host) {
                    Ok(m) if (m.dev(), m.ino()) == (held.dev(), held.ino()) => {}
                    _ => return Err(Stale.into()),
                }
                return Ok(Lock {
                    _flock: Some(f),
                    _tree: None,
                    cleanup,
                });
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    bail!(
                        "another istio-vm run holds {shown} for over {:?}; wait for it \
                         or raise lock_timeout",
                        timeout
                    );
                }
                file = f;
                // flock has no timed wait; poll briefly.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {shown}")),
        }
    }
}
