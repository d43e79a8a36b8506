//! One run at a time: an exclusive flock on `/run/lock/istio-vm.lock`
//! (under the root). A second run waits up to `lock_timeout`, then sees the
//! first run's result and has nothing left to do.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg, OFlag};

use super::Root;
use crate::layout;

pub struct Lock {
    _flock: Flock<File>,
}

/// Take the lock, creating the lock file (and `/run/lock`) if needed.
pub fn acquire(root: &Root, timeout: Duration) -> Result<Lock> {
    let r = root.resolve(layout::LOCK_FILE)?;
    if let Some(parent) = r.host.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating lock directory {}", parent.display()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(&r.host)
        .with_context(|| format!("opening lock file {}", r.host.display()))?;
    take(file, FlockArg::LockExclusiveNonblock, timeout, &r.real)
}

/// A shared lock for `--check`, only if the lock file already exists (a
/// check run never creates anything).
pub fn acquire_shared(root: &Root, timeout: Duration) -> Result<Option<Lock>> {
    let r = root.resolve(layout::LOCK_FILE)?;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(&r.host)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening lock file {}", r.real)),
    };
    take(file, FlockArg::LockSharedNonblock, timeout, &r.real).map(Some)
}

fn take(mut file: File, arg: FlockArg, timeout: Duration, shown: &str) -> Result<Lock> {
    let deadline = Instant::now() + timeout;
    loop {
        match Flock::lock(file, arg) {
            Ok(f) => return Ok(Lock { _flock: f }),
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
