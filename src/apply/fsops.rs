//! File system primitives on resolved host paths. Writes are atomic (temp in
//! the same directory, fchown/fchmod on the fd, fsync, rename, fsync the
//! directory) and never follow a symlink at the final component.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::plan::Current;

/// What is at `host` now; nothing on the way is followed (see
/// `walk_parent`), so what is read is what a later write would replace.
pub fn read_current(host: &Path) -> Result<Current> {
    let dir = match walk_parent(host) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(Current::Absent),
        Err(_) => open_parent_nofollow(host)?,
    };
    let name = file_name(host)?;
    let st = match nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Current::Absent),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", host.display())),
    };
    let (mode, uid, gid) = (st.st_mode & 0o7777, st.st_uid, st.st_gid);
    Ok(match st.st_mode & nix::libc::S_IFMT {
        nix::libc::S_IFLNK => Current::Symlink,
        nix::libc::S_IFDIR => Current::Dir { mode, uid, gid },
        nix::libc::S_IFREG => {
            // O_NONBLOCK: a fifo swapped in meanwhile must not hang the run.
            let fd = nix::fcntl::openat(
                &dir,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("cannot read {}", host.display()))?;
            let mut f = File::from(fd);
            let m = f.metadata()?;
            if !m.is_file() {
                bail!("{} changed while being read; run again", host.display());
            }
            // Bounded like every read of the root (a target or its backup
            // is a small text file; a huge one is refused, not slurped).
            let cap = crate::sysroot::READ_CAP;
            if m.len() > cap {
                bail!(
                    "{} is larger than {cap} bytes: not a file istio-vm places; move it away",
                    host.display()
                );
            }
            let mut bytes = Vec::with_capacity(m.len() as usize);
            (&mut f)
                .take(cap + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read {}", host.display()))?;
            if bytes.len() as u64 > cap {
                bail!("{} grew while being read; run again", host.display());
            }
            Current::File {
                bytes,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            }
        }
        _ => Current::Other,
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

fn set_fd_meta(f: &File, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(f, Some(u), Some(g)).context("fchown")?;
    }
    // After fchown: chown clears set-id bits.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .context("fchmod")?;
    Ok(())
}

/// Open the directory holding `host` without following any symlink on the
/// way: the resolver already replaced every link by its target (and the
/// root itself is canonical), so a link met now was planted after
/// resolution and must not redirect the write.
fn open_parent_nofollow(host: &Path) -> Result<OwnedFd> {
    walk_parent(host)
        .map_err(std::io::Error::from)
        .with_context(|| {
            format!(
                "refusing to touch {}: a directory on its path is missing, changed or became a \
             symbolic link while running",
                host.display()
            )
        })
}

fn walk_parent(host: &Path) -> std::result::Result<OwnedFd, Errno> {
    let parent = host.parent().ok_or(Errno::EINVAL)?;
    let comps: Vec<_> = parent
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let last_how = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if comps.is_empty() {
        return nix::fcntl::open("/", last_how, Mode::empty());
    }
    let mut fd = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for (i, c) in comps.iter().enumerate() {
        // Intermediate directories need only be searchable; the last one is
        // opened for reading so it can be fsynced.
        let how = if i + 1 == comps.len() {
            last_how
        } else {
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
        };
        fd = nix::fcntl::openat(&fd, *c, how | OFlag::O_NOFOLLOW, Mode::empty())?;
    }
    Ok(fd)
}

fn file_name(host: &Path) -> Result<&std::ffi::OsStr> {
    host.file_name()
        .with_context(|| format!("{} has no file name", host.display()))
}

/// The directory `name` inside `dir`, never through a symlink.
fn open_child_dir(dir: &OwnedFd, name: &std::ffi::OsStr, host: &Path) -> Result<File> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .with_context(|| {
        format!(
            "opening directory {} (never through a symbolic link)",
            host.display()
        )
    })
}

/// Atomically replace (or create) the file at `host`. `failpoint` is the
/// step id, for the test-only fault injection between write and rename.
/// Every step works relative to the parent directory's descriptor, opened
/// without following symlinks.
pub fn write_atomic(
    host: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    failpoint: &str,
    sync: &Syncer,
) -> Result<()> {
    let dir = open_parent_nofollow(host)?;
    let name = file_name(host)?;
    let tmp_path = temp_of(host);
    let tmp = tmp_path.file_name().expect("temp name");
    let shown = || tmp_path.display().to_string();
    match nix::unistd::unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", shown())),
    }
    let refuse_link = || -> Result<()> {
        match nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK => bail!(
                "refusing to write {}: it is a symbolic link (never followed); remove the link",
                host.display()
            ),
            _ => Ok(()),
        }
    };
    refuse_link()?;
    let result = (|| -> Result<()> {
        // 0600 from the first byte: the token is never readable by others.
        let fd = nix::fcntl::openat(
            &dir,
            tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("creating {}", shown()))?;
        let mut f = File::from(fd);
        f.write_all(content)
            .with_context(|| format!("writing {}", shown()))?;
        set_fd_meta(&f, mode, owner)
            .with_context(|| format!("setting owner/mode of {}", shown()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", shown()))?;
        super::failpoint(&format!("{failpoint}:written"))?;
        refuse_link()?;
        match nix::fcntl::renameat(&dir, tmp, &dir, name) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                // A bind-mounted file (/etc/hosts in containers) cannot be
                // replaced; write it in place instead.
                write_in_place(&dir, name, host, content, mode, owner)?;
                let _ = nix::unistd::unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("renaming into {}", host.display()));
            }
        }
        match &sync.deferred {
            None => nix::unistd::fsync(&dir)
                .with_context(|| format!("syncing the directory of {}", host.display())),
            Some(_) => sync.parent_of(host),
        }
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir);
    }
    result
}

fn write_in_place(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    host: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {} to write in place", host.display()))?;
    let mut f = File::from(fd);
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

/// Create one directory (its parent must exist) with exact mode and owner.
pub fn mkdir(host: &Path, mode: u32, owner: Option<(u32, u32)>, sync: &Syncer) -> Result<()> {
    let dir = open_parent_nofollow(host)?;
    let name = file_name(host)?;
    // Private until owner and mode are set.
    nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
        .with_context(|| format!("creating directory {}", host.display()))?;
    let d = open_child_dir(&dir, name, host)?;
    set_fd_meta(&d, mode, owner)
        .with_context(|| format!("setting owner/mode of {}", host.display()))?;
    match &sync.deferred {
        None => nix::unistd::fsync(&dir)
            .with_context(|| format!("syncing the directory of {}", host.display())),
        Some(_) => sync.parent_of(host),
    }
}

/// chmod/chown an existing directory (not through a symlink).
pub fn set_dir_meta(host: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let dir = open_parent_nofollow(host)?;
    let d = open_child_dir(&dir, file_name(host)?, host)?;
    set_fd_meta(&d, mode, owner)
        .with_context(|| format!("setting owner/mode of {}", host.display()))?;
    d.sync_all().ok();
    Ok(())
}

/// Remove a file (or a symlink itself); absent is fine.
pub fn remove_file(host: &Path, sync: &Syncer) -> Result<()> {
    let dir = match walk_parent(host) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(()),
        Err(_) => open_parent_nofollow(host)?,
    };
    match nix::unistd::unlinkat(&dir, file_name(host)?, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => sync.parent_of(host),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", host.display())),
    }
}

/// Rename a directory to a sibling name that must not exist yet: a whole
/// tree appears (or goes) in one step, then the parent is synced.
pub fn rename_dir(from: &Path, to: &Path) -> Result<()> {
    let dir = open_parent_nofollow(from)?;
    nix::fcntl::renameat2(
        &dir,
        file_name(from)?,
        &dir,
        file_name(to)?,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    nix::unistd::fsync(&dir).with_context(|| format!("syncing the directory of {}", from.display()))
}

/// Remove a directory if it is empty. Returns false if it was left in place.
pub fn rmdir_if_empty(host: &Path, sync: &Syncer) -> Result<bool> {
    let dir = match walk_parent(host) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(true),
        Err(_) => open_parent_nofollow(host)?,
    };
    match nix::unistd::unlinkat(&dir, file_name(host)?, UnlinkatFlags::RemoveDir) {
        Ok(()) => {
            sync.parent_of(host)?;
            Ok(true)
        }
        Err(Errno::ENOENT) => Ok(true),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing directory {}", host.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_never_go_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("f"), "keep\n").unwrap();
        // A parent swapped for a link after resolution.
        std::os::unix::fs::symlink(&elsewhere, base.join("dir")).unwrap();
        let e =
            write_atomic(&base.join("dir/f"), b"x", 0o644, None, "t", &Syncer::now()).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        // A link at the final component.
        std::os::unix::fs::symlink(elsewhere.join("f"), base.join("link")).unwrap();
        let e =
            write_atomic(&base.join("link"), b"x", 0o644, None, "t", &Syncer::now()).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("f")).unwrap(),
            "keep\n"
        );
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            1,
            "no temp file left"
        );
        // The ordinary case, mode exact regardless of umask.
        write_atomic(&base.join("new"), b"y", 0o640, None, "t", &Syncer::now()).unwrap();
        let m = std::fs::metadata(base.join("new")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read(base.join("new")).unwrap(), b"y");
        assert!(!temp_of(&base.join("new")).exists());
    }

    #[test]
    fn directories_are_made_and_removed_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir_all(elsewhere.join("sub")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, base.join("dir")).unwrap();
        let now = Syncer::now();
        assert!(mkdir(&base.join("dir/new"), 0o755, None, &now).is_err());
        assert!(set_dir_meta(&base.join("dir/sub"), 0o700, None).is_err());
        assert!(rmdir_if_empty(&base.join("dir/sub"), &now).is_err());
        std::fs::write(elsewhere.join("f"), "keep").unwrap();
        assert!(remove_file(&base.join("dir/f"), &now).is_err());
        assert!(elsewhere.join("sub").is_dir() && elsewhere.join("f").is_file());
        assert!(!elsewhere.join("new").exists());
        // Through real directories all of it works; absent is fine.
        mkdir(&base.join("real"), 0o751, None, &now).unwrap();
        assert_eq!(
            std::fs::metadata(base.join("real")).unwrap().mode() & 0o7777,
            0o751
        );
        set_dir_meta(&base.join("real"), 0o755, None).unwrap();
        assert_eq!(
            std::fs::metadata(base.join("real")).unwrap().mode() & 0o7777,
            0o755
        );
        remove_file(&base.join("real/absent"), &now).unwrap();
        remove_file(&base.join("gone/absent"), &now).unwrap();
        std::fs::write(base.join("real/x"), "").unwrap();
        assert!(!rmdir_if_empty(&base.join("real"), &now).unwrap());
        remove_file(&base.join("real/x"), &now).unwrap();
        assert!(rmdir_if_empty(&base.join("real"), &now).unwrap());
        assert!(!base.join("real").exists());
    }
}
