//! File system primitives on resolved host paths. Writes are atomic (temp in
//! the same directory, fchown/fchmod on the fd, fsync, rename, fsync the
//! directory) and never follow a symlink at the final component.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::OFlag;

use crate::plan::Current;

/// What is at `host` now; a file's bytes are read without following a link.
pub fn read_current(host: &Path) -> Result<Current> {
    let meta = match std::fs::symlink_metadata(host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Current::Absent),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", host.display())),
    };
    let ft = meta.file_type();
    Ok(if ft.is_symlink() {
        Current::Symlink
    } else if ft.is_dir() {
        Current::Dir {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    } else if ft.is_file() {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(host)
            .with_context(|| format!("cannot read {}", host.display()))?;
        let m = f.metadata()?;
        let mut bytes = Vec::with_capacity(m.len() as usize);
        f.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", host.display()))?;
        Current::File {
            bytes,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    } else {
        Current::Other
    })
}

/// Name of the temp file for `host`: fixed, so a crash leaves at most one
/// per target and recovery knows where to look (runs hold the lock).
pub fn temp_of(host: &Path) -> PathBuf {
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    host.with_file_name(format!(".{name}.istio-vm.tmp"))
}

fn refuse_symlink(host: &Path) -> Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(host)
        && m.file_type().is_symlink()
    {
        bail!(
            "refusing to write {}: it is a symbolic link (never followed); remove the link",
            host.display()
        );
    }
    Ok(())
}

fn set_fd_meta(f: &File, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(f, Some(u), Some(g)).context("fchown")?;
    }
    // After fchown: chown clears set-id bits.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .context("fchmod")?;
    Ok(())
}

/// Atomically replace (or create) the file at `host`. `failpoint` is the
/// step id, for the test-only fault injection between write and rename.
pub fn write_atomic(
    host: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    failpoint: &str,
    sync: &Syncer,
) -> Result<()> {
    refuse_symlink(host)?;
    let tmp = temp_of(host);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", tmp.display())),
    }
    let result = (|| -> Result<()> {
        // 0600 from the first byte: the token is never readable by others.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(content)
            .with_context(|| format!("writing {}", tmp.display()))?;
        set_fd_meta(&f, mode, owner)
            .with_context(|| format!("setting owner/mode of {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        super::failpoint(&format!("{failpoint}:written"))?;
        refuse_symlink(host)?;
        match std::fs::rename(&tmp, host) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                // A bind-mounted file (/etc/hosts in containers) cannot be
                // replaced; write it in place instead.
                write_in_place(host, content, mode, owner)?;
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("renaming into {}", host.display()));
            }
        }
        sync.parent_of(host)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_in_place(host: &Path, content: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(host)
        .with_context(|| format!("opening {} to write in place", host.display()))?;
    f.write_all(content)
        .and_then(|()| f.set_len(content.len() as u64))
        .with_context(|| format!("writing {} in place", host.display()))?;
    let m = f.metadata()?;
    if m.mode() & 0o7777 != mode || owner.is_some_and(|(u, g)| (m.uid(), m.gid()) != (u, g)) {
        set_fd_meta(&f, mode, owner)?;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", host.display()))
}

/// When directory fsyncs happen: at once, or batched until `flush` (a
/// transaction syncs each touched directory once, before it commits; the
/// journal covers a crash before that).
#[derive(Debug, Default)]
pub struct Syncer {
    deferred: Option<std::cell::RefCell<std::collections::BTreeSet<PathBuf>>>,
}

impl Syncer {
    pub fn now() -> Syncer {
        Syncer { deferred: None }
    }

    pub fn deferred() -> Syncer {
        Syncer {
            deferred: Some(Default::default()),
        }
    }

    /// The directory holding `host` must reach the disk.
    pub fn parent_of(&self, host: &Path) -> Result<()> {
        match &self.deferred {
            None => sync_parent(host),
            Some(set) => {
                if let Some(p) = host.parent() {
                    set.borrow_mut().insert(p.to_path_buf());
                }
                Ok(())
            }
        }
    }

    /// fsync every directory recorded so far.
    pub fn flush(&self) -> Result<()> {
        if let Some(set) = &self.deferred {
            for d in std::mem::take(&mut *set.borrow_mut()) {
                match File::open(&d) {
                    Ok(f) => f
                        .sync_all()
                        .with_context(|| format!("syncing directory {}", d.display()))?,
                    // Removed again later in the same run.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("syncing directory {}", d.display()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// fsync the directory holding `host`, so a rename or unlink is durable.
pub fn sync_parent(host: &Path) -> Result<()> {
    if let Some(p) = host.parent() {
        File::open(p)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", p.display()))?;
    }
    Ok(())
}

fn open_dir_nofollow(host: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(host)
        .with_context(|| format!("opening directory {}", host.display()))
}

/// Create one directory (its parent must exist) with exact mode and owner.
pub fn mkdir(host: &Path, mode: u32, owner: Option<(u32, u32)>, sync: &Syncer) -> Result<()> {
    std::fs::create_dir(host).with_context(|| format!("creating directory {}", host.display()))?;
    let d = open_dir_nofollow(host)?;
    set_fd_meta(&d, mode, owner)
        .with_context(|| format!("setting owner/mode of {}", host.display()))?;
    sync.parent_of(host)
}

/// chmod/chown an existing directory (not through a symlink).
pub fn set_dir_meta(host: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let d = open_dir_nofollow(host)?;
    set_fd_meta(&d, mode, owner)
        .with_context(|| format!("setting owner/mode of {}", host.display()))?;
    d.sync_all().ok();
    Ok(())
}

/// Remove a file (or a symlink itself); absent is fine.
pub fn remove_file(host: &Path, sync: &Syncer) -> Result<()> {
    match std::fs::remove_file(host) {
        Ok(()) => sync.parent_of(host),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", host.display())),
    }
}

/// Remove a directory if it is empty. Returns false if it was left in place.
pub fn rmdir_if_empty(host: &Path, sync: &Syncer) -> Result<bool> {
    match std::fs::remove_dir(host) {
        Ok(()) => {
            sync.parent_of(host)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing directory {}", host.display())),
    }
}
