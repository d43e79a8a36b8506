//! The VM's filesystem. Every path istio-vm reads or writes on the VM goes
//! through here, resolved under `--root` as a chroot would: a Debian tree's
//! `var/run -> /run` means `ROOT/run`, `..` never climbs above the root.
//!
//! Resolution uses the kernel: `openat2(2)` with `RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS`, so a read opens exactly the file the kernel
//! resolved, with no window between check and use. Kernels before 5.6 lack
//! `openat2` (ENOSYS); only there a user-space walk does the same job, and
//! its result is then opened one component at a time with `O_NOFOLLOW`, so a
//! link planted meanwhile is an error, never a way out. The unit tests run
//! every case with both resolvers.
//!
//! Reads are bounded: only regular files are opened for reading (a FIFO, a
//! device or a socket is refused after an `O_PATH` open and `fstat`, before
//! any read), and each read has a size cap. So nothing the VM holds can hang
//! a run or grow its memory, which is what bounds verify's file reads by its
//! timeout.
//!
//! Users and groups follow one rule for every caller: live (root `/`) they
//! come from NSS, as the services that use them see them (sssd, LDAP);
//! under `--root` from the tree's own `/etc/passwd` and `/etc/group`, never
//! from the build host's database.
//!
//! Kept in one module (about 800 lines before its tests) because it is the
//! one place that knows how a VM path becomes a file: splitting resolution
//! from reading would give two places to keep in step again.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Size cap of an ordinary read (config, passwd, certificates, tokens).
pub const READ_CAP: u64 = 16 << 20;

/// Symlink hops allowed in one resolution (the kernel's ELOOP limit).
const MAX_HOPS: u32 = 40;

/// How paths are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`.
    Kernel,
    /// The user-space walk, for kernels without `openat2`.
    Walk,
}

/// The kernel's resolver when it has one (probed once).
fn default_resolver() -> Resolver {
    static R: OnceLock<Resolver> = OnceLock::new();
    *R.get_or_init(|| {
        match rustix::fs::openat2(
            rustix::fs::CWD,
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(_) => Resolver::Kernel,
            // ENOSYS before Linux 5.6; EPERM from a seccomp filter that
            // does not know the call.
            Err(_) => Resolver::Walk,
        }
    })
}

/// The root every VM path is resolved under.
#[derive(Debug, Clone)]
pub struct Sysroot {
    dir: PathBuf,
    fd: Arc<OwnedFd>,
    /// Owner of the root directory: `/` is root's; a scratch tree is its
    /// builder's. Parent symlinks the writer follows must belong to uid 0 or
    /// to this owner.
    trusted_uid: u32,
    resolver: Resolver,
}

/// A path after resolution for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Absolute path inside the root with no symlink among its parents.
    pub real: String,
    /// The same path on this host (root prefixed).
    pub host: PathBuf,
}

/// What `stat` found (symlinks followed inside the root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Other,
}

/// uid and primary gid of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// Which package database said a package is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageDb {
    /// `/var/lib/dpkg/status` under the root.
    Dpkg,
    /// `rpm --root ROOT -q`.
    Rpm,
}

impl std::fmt::Display for PackageDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PackageDb::Dpkg => "dpkg",
            PackageDb::Rpm => "rpm",
        })
    }
}

/// An installed package's version, as its database records it (dpkg:
/// `[epoch:]upstream[-revision]`; rpm: `VERSION-RELEASE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    pub version: String,
    pub source: PackageDb,
}

fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
    }
}

/// Nothing is there: absent, or a file where a directory would be.
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// `path` split into components; `.` dropped, `..` kept.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

fn rel(parts: &[String]) -> String {
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// What one walk found: the resolved components and every symlink it
/// followed (its path inside the root and its owner).
struct Walked {
    parts: Vec<String>,
    links: Vec<(String, u32)>,
}

impl Sysroot {
    /// Open the root. `dir` must be a directory (`/` when live).
    pub fn new(dir: &Path) -> Result<Sysroot> {
        let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!(
                "--root {}: no such directory; give the directory holding the VM's tree",
                dir.display()
            ),
            _ => anyhow!("--root {}: cannot open it: {e}", dir.display()),
        })?;
        if !meta.is_dir() {
            bail!(
                "--root {} is not a directory: --root takes the directory holding the VM's \
                 file tree (an image mounted or unpacked there); leave it out to act on this \
                 machine",
                dir.display()
            );
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--root {}: cannot open it", dir.display()))?;
        let fd = rustix::fs::open(
            &dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("--root {}: cannot open it", dir.display()))?;
        let st = rustix::fs::fstat(&fd).context("--root: stat")?;
        Ok(Sysroot {
            dir,
            fd: Arc::new(fd),
            trusted_uid: st.st_uid,
            resolver: default_resolver(),
        })
    }

    /// The same root with another resolver: tests run every case both ways.
    #[doc(hidden)]
    pub fn with_resolver(mut self, r: Resolver) -> Sysroot {
        self.resolver = r;
        self
    }

    pub fn resolver(&self) -> Resolver {
        self.resolver
    }

    /// The canonical root directory on this host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live machine: `/`, and not a chroot (there, `/` is an image and
    /// the host's netfilter and systemd are not this root's).
    pub fn is_live(&self) -> bool {
        self.dir == Path::new("/") && !crate::chroot::in_chroot()
    }

    /// Host path of an already resolved absolute path.
    pub fn host(&self, real: &str) -> PathBuf {
        let rel = real.trim_start_matches('/');
        if rel.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(rel)
        }
    }

    // ---- resolution ------------------------------------------------------

    /// The user-space walk: symlinks among the parents (and the final
    /// component when `follow_final`) are replaced by their targets inside
    /// the root. Missing components are kept as they are.
    fn walk(&self, path: &str, follow_final: bool) -> io::Result<Walked> {
        let mut queue: std::collections::VecDeque<String> = components(path).into();
        let mut cur: Vec<String> = Vec::new();
        let mut links = Vec::new();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if c == ".." {
                cur.pop();
                continue;
            }
            if queue.is_empty() && !follow_final {
                cur.push(c);
                break;
            }
            let mut probe = cur.clone();
            probe.push(c.clone());
            let st = match rustix::fs::statat(&*self.fd, rel(&probe), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => {
                    cur.push(c);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(io::Error::other(format!(
                            "resolving {path}: too many levels of symbolic links"
                        )));
                    }
                    let target = rustix::fs::readlinkat(&*self.fd, rel(&probe), Vec::new())?;
                    let target = target.to_string_lossy().into_owned();
                    links.push((join(&probe), st.st_uid));
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    for (i, t) in components(&target).into_iter().enumerate() {
                        queue.insert(i, t);
                    }
                }
                FileType::Directory => cur.push(c),
                _ if queue.is_empty() => cur.push(c),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", join(&probe)),
                    ));
                }
            }
        }
        Ok(Walked { parts: cur, links })
    }

    /// Resolve `path` (absolute, as on the VM) for the writer: parents are
    /// followed inside the root, the final component never is (the writer
    /// refuses a symlink there), and every followed parent link must belong
    /// to root or to the root directory's owner.
    pub fn resolve(&self, path: &str) -> Result<Resolved> {
        let real = match self.resolver {
            Resolver::Kernel => match self.kernel_resolve(path)? {
                Some(r) => r,
                None => self.walk_resolve(path)?,
            },
            Resolver::Walk => self.walk_resolve(path)?,
        };
        Ok(Resolved {
            host: self.host(&real),
            real,
        })
    }

    fn walk_resolve(&self, path: &str) -> Result<String> {
        let w = self.walk(path, false).map_err(|e| match e.kind() {
            io::ErrorKind::NotADirectory => {
                anyhow!("cannot place {path}: {e}; move it away")
            }
            _ => anyhow!("resolving {path}: {e}"),
        })?;
        for (link, uid) in &w.links {
            if *uid != 0 && *uid != self.trusted_uid {
                bail!(
                    "refusing {path}: its parent {link} is a symbolic link owned by uid {uid}, \
                     not by root; replace it with a directory or a root-owned link"
                );
            }
        }
        Ok(join(&w.parts))
    }

    /// The kernel resolves the deepest existing parent; `None` hands the
    /// case to the walk (a link among the parents, whose owner the policy
    /// checks; a dangling link; no /proc to name the result).
    fn kernel_resolve(&self, path: &str) -> Result<Option<String>> {
        let raw: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if raw.iter().any(|c| *c == "." || *c == "..") {
            return Ok(None);
        }
        let parts = components(path);
        let Some((name, parent)) = parts.split_last() else {
            return Ok(Some("/".into()));
        };
        let mut n = parent.len();
        let fd = loop {
            match self.openat2(&rel(&parent[..n]), OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => break fd,
                Err(rustix::io::Errno::NOENT) if n > 0 => n -= 1,
                Err(_) => return Ok(None),
            }
        };
        if n < parent.len() {
            // The first missing component: a dangling link there points
            // somewhere inside the root the walk must name.
            match rustix::fs::statat(&fd, parent[n].as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Err(rustix::io::Errno::NOENT) => {}
                _ => return Ok(None),
            }
        }
        let Some(base) = self.real_of(&fd) else {
            return Ok(None);
        };
        if base != join(&parent[..n]) {
            // A symlink was followed: the walk checks its owner.
            return Ok(None);
        }
        let mut all = parent.to_vec();
        all.push(name.clone());
        Ok(Some(join(&all)))
    }

    /// The path inside the root of an open descriptor (from /proc).
    fn real_of(&self, fd: &OwnedFd) -> Option<String> {
        let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let inner = p.strip_prefix(&self.dir).ok()?;
        Some(format!("/{}", inner.to_str()?))
    }

    fn openat2(&self, rel: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        // EAGAIN: a rename or mount raced the resolution; the kernel asks
        // for a retry.
        // openat2 refuses O_PATH with any flag but these (EINVAL).
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &*self.fd,
                rel,
                flags,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
                r => return r,
            }
        }
    }

    /// Open `path` with every symlink (the final one too) followed inside
    /// the root.
    fn open_fd(&self, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
        match self.resolver {
            Resolver::Kernel => Ok(self.openat2(&rel(&components(path)), flags)?),
            Resolver::Walk => {
                let w = self.walk(path, true)?;
                // Opened one component at a time without following: the
                // walk already replaced every link.
                let mut fd = rustix::fs::openat(
                    &*self.fd,
                    ".",
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let Some((last, dirs)) = w.parts.split_last() else {
                    return Ok(rustix::fs::openat(
                        &*self.fd,
                        ".",
                        flags | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?);
                };
                for d in dirs {
                    fd = rustix::fs::openat(
                        &fd,
                        d.as_str(),
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                }
                Ok(rustix::fs::openat(
                    &fd,
                    last.as_str(),
                    flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?)
            }
        }
    }

    // ---- reading ---------------------------------------------------------

    /// What is at `path` (links followed inside the root); `None` if absent.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>> {
        let fd = match self.open_fd(path, OFlags::PATH) {
            Ok(fd) => fd,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("resolving {path}")),
        };
        let st = rustix::fs::fstat(&fd).with_context(|| format!("stat {path}"))?;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            _ => Kind::Other,
        };
        Ok(Some(Stat {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
        }))
    }

    /// Open the regular file at `path` for reading; `None` if absent. A
    /// FIFO, device, socket or directory is refused before it is opened
    /// for reading.
    pub fn open(&self, path: &str) -> Result<Option<File>> {
        let probe = match self.open_fd(path, OFlags::PATH) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("resolving {path}")),
        };
        let st = rustix::fs::fstat(&probe).with_context(|| format!("stat {path}"))?;
        check_regular(path, &st)?;
        // O_NONBLOCK: should a FIFO be swapped in between the two opens,
        // opening it cannot block, and the identity check below refuses it.
        let fd = self
            .open_fd(path, OFlags::RDONLY | OFlags::NONBLOCK)
            .with_context(|| format!("opening {path}"))?;
        let again = rustix::fs::fstat(&fd).with_context(|| format!("stat {path}"))?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
            bail!("{path} changed while being opened; run again");
        }
        Ok(Some(File::from(fd)))
    }

    /// The bytes of the regular file at `path`, at most `READ_CAP`.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.read_capped(path, READ_CAP)
    }

    /// The bytes of the regular file at `path`, refused above `cap`.
    pub fn read_capped(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.open(path)? else {
            return Ok(None);
        };
        read_bounded(f, cap, path).map(Some)
    }

    /// Text of the regular file at `path` (invalid UTF-8 replaced).
    pub fn read_string(&self, path: &str) -> Result<Option<String>> {
        Ok(self
            .read(path)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The last `max` bytes of the regular file at `path`.
    pub fn tail(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(mut f) = self.open(path)? else {
            return Ok(None);
        };
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        read_bounded(f, max, path).map(Some)
    }

    /// Names in the directory at `path`, sorted; empty if it is absent or
    /// not a directory.
    pub fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        let fd = match self.open_fd(path, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if absent(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("opening directory {path}")),
        };
        let mut names = Vec::new();
        for e in rustix::fs::Dir::new(fd).with_context(|| format!("reading {path}"))? {
            let e = e.with_context(|| format!("reading {path}"))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    // ---- users, resolv.conf, packages -------------------------------------

    /// uid and primary gid of user `name`: NSS when live, the root's
    /// `/etc/passwd` otherwise.
    pub fn user(&self, name: &str) -> Result<Option<UserIds>> {
        if self.is_live() {
            let u = nix::unistd::User::from_name(name)
                .with_context(|| format!("looking up user {name}"))?;
            return Ok(u.map(|u| UserIds {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }));
        }
        Ok(self
            .read_string("/etc/passwd")?
            .and_then(|t| passwd_ids(&t, name)))
    }

    /// gid of group `name`: NSS when live, the root's `/etc/group` otherwise.
    pub fn group(&self, name: &str) -> Result<Option<u32>> {
        if self.is_live() {
            let g = nix::unistd::Group::from_name(name)
                .with_context(|| format!("looking up group {name}"))?;
            return Ok(g.map(|g| g.gid.as_raw()));
        }
        Ok(self
            .read_string("/etc/group")?
            .and_then(|t| lookup_id(&t, name)))
    }

    /// The VM's `/etc/resolv.conf` (empty if there is none).
    pub fn resolv_conf(&self) -> Result<String> {
        Ok(self.read_string("/etc/resolv.conf")?.unwrap_or_default())
    }

    /// The installed version of package `name`: dpkg's status file under
    /// the root first, then rpm's database (through `rpm --root`) when the
    /// root has one and rpm is on this host.
    pub fn installed_package(&self, name: &str) -> Result<Option<InstalledPackage>> {
        if let Some(f) = self.open("/var/lib/dpkg/status")? {
            if let Some(version) = dpkg_version(f, name)? {
                return Ok(Some(InstalledPackage {
                    version,
                    source: PackageDb::Dpkg,
                }));
            }
        }
        // The database where the VM's own rpm keeps it (this host's rpm may
        // be configured for another place: Debian's uses ~/.rpmdb).
        let Some(dbpath) = ["/usr/lib/sysimage/rpm", "/var/lib/rpm"]
            .into_iter()
            .find(|d| matches!(self.stat(d), Ok(Some(s)) if s.kind == Kind::Dir))
        else {
            return Ok(None);
        };
        rpm_version(&self.dir, dbpath, name)
    }
}

fn check_regular(path: &str, st: &rustix::fs::Stat) -> Result<()> {
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        bail!(
            "{path} is {}, not a regular file: istio-vm reads only regular files there; \
             replace it with the file itself",
            kind_name(ft)
        );
    }
    Ok(())
}

fn read_bounded(f: File, cap: u64, shown: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {shown}"))?;
    if buf.len() as u64 > cap {
        bail!("{shown} is larger than {cap} bytes: not a file istio-vm expects there");
    }
    Ok(buf)
}

/// Read a file named on the command line (`--config`): symlinks are
/// followed (the path is the user's own choice), but only a regular file is
/// read, at most `cap` bytes. `None` if it does not exist.
pub fn read_host_file(path: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    let shown = path.display().to_string();
    let probe = match rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io::Error::from(e)).with_context(|| format!("opening {shown}")),
    };
    let st = rustix::fs::fstat(&probe).with_context(|| format!("stat {shown}"))?;
    check_regular(&shown, &st)?;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {shown}"))?;
    let again = rustix::fs::fstat(&fd)?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        bail!("{shown} changed while being opened; run again");
    }
    read_bounded(File::from(fd), cap, &shown).map(Some)
}

/// uid and primary gid of `name` in passwd(5) text.
pub fn passwd_ids(text: &str, name: &str) -> Option<UserIds> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name)
            .then(|| {
                Some(UserIds {
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                })
            })
            .flatten()
    })
}

/// The numeric id of `name` in a passwd- or group-format file (field 3).
pub fn lookup_id(text: &str, name: &str) -> Option<u32> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// Version of an installed `name` in dpkg's status file (deb822 stanzas;
/// the `Status` is `want flag state`, and only state `installed` counts).
/// Streamed: the file can be megabytes; a line longer than the cap is an
/// error, not a reason to grow.
fn dpkg_version(f: File, name: &str) -> Result<Option<String>> {
    use std::io::BufRead;
    const LINE_CAP: u64 = 1 << 20;
    let mut r = io::BufReader::new(f);
    let (mut pkg, mut status, mut version) = (None::<String>, None::<String>, None::<String>);
    let done = |pkg: &Option<String>, status: &Option<String>, version: &Option<String>| {
        (pkg.as_deref() == Some(name)
            && status
                .as_deref()
                .is_some_and(|s| s.split_whitespace().nth(2) == Some("installed")))
        .then(|| version.clone())
        .flatten()
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(LINE_CAP)
            .read_until(b'\n', &mut line)
            .context("reading /var/lib/dpkg/status")?;
        if n as u64 == LINE_CAP && line.last() != Some(&b'\n') {
            bail!("/var/lib/dpkg/status has a line over {LINE_CAP} bytes");
        }
        let text = String::from_utf8_lossy(&line);
        let l = text.trim_end_matches(['\n', '\r']);
        if l.is_empty() {
            if let Some(v) = done(&pkg, &status, &version) {
                return Ok(Some(v));
            }
            (pkg, status, version) = (None, None, None);
            if n == 0 {
                return Ok(None);
            }
            continue;
        }
        if let Some((k, v)) = l.split_once(':')
            && !l.starts_with([' ', '\t'])
        {
            let v = Some(v.trim().to_string());
            match k {
                "Package" => pkg = v,
                "Status" => status = v,
                "Version" => version = v,
                _ => {}
            }
        }
    }
}

/// `rpm --root ROOT --dbpath DB -q --qf '%{VERSION}-%{RELEASE}' NAME`,
/// bounded in time (rpm can wait on a locked database).
fn rpm_version(root: &Path, dbpath: &str, name: &str) -> Result<Option<InstalledPackage>> {
    use std::process::{Command, Stdio};
    let mut child = match Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["--dbpath", dbpath])
        .args(["-q", "--qf", "%{VERSION}-%{RELEASE}", "--", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        // No rpm on this host: the database cannot be read, which is not
        // an error of the VM's.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running rpm -q"),
    };
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut out).take(64 << 10).read_to_end(&mut b);
        b
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for rpm -q")? {
            break s;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("rpm -q {name} did not answer within 20s (is its database locked?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let bytes = reader.join().unwrap_or_default();
    if !status.success() {
        // "package NAME is not installed" (exit 1).
        return Ok(None);
    }
    let v = String::from_utf8_lossy(&bytes).trim().to_string();
    Ok((!v.is_empty()).then_some(InstalledPackage {
        version: v,
        source: PackageDb::Rpm,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Is the open file the one `b` names on the host?
    fn same_file(a: &File, b: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (x, y) = (a.metadata().unwrap(), std::fs::metadata(b).unwrap());
        (x.dev(), x.ino()) == (y.dev(), y.ino())
    }

    /// Each test body runs once with each resolver.
    fn both(t: impl Fn(&Sysroot, &Path)) {
        for r in [Resolver::Kernel, Resolver::Walk] {
            let d = tempfile::tempdir().unwrap();
            let root = Sysroot::new(d.path()).unwrap().with_resolver(r);
            t(&root, root.dir());
        }
    }

    #[test]
    fn this_kernel_has_openat2() {
        // The machines CI runs on are newer than 5.6: the kernel path is
        // the one taken, not silently the fallback.
        assert_eq!(default_resolver(), Resolver::Kernel);
    }

    #[test]
    fn parents_resolve_inside_the_root() {
        both(|r, d| {
            std::fs::create_dir_all(d.join("run")).unwrap();
            std::fs::create_dir_all(d.join("var")).unwrap();
            symlink("/run", d.join("var/run")).unwrap();
            let x = r.resolve("/var/run/secrets/tokens/istio-token").unwrap();
            assert_eq!(x.real, "/run/secrets/tokens/istio-token");
            assert_eq!(x.host, d.join("run/secrets/tokens/istio-token"));
            // Escapes are clamped to the root.
            symlink("../../../../etc", d.join("esc")).unwrap();
            assert_eq!(r.resolve("/esc/passwd").unwrap().real, "/etc/passwd");
            assert_eq!(r.resolve("/../../etc/hosts").unwrap().real, "/etc/hosts");
            // Relative links.
            std::fs::create_dir_all(d.join("var/lib/istio")).unwrap();
            std::fs::create_dir_all(d.join("etc")).unwrap();
            symlink("../var/lib/istio", d.join("etc/istio")).unwrap();
            assert_eq!(
                r.resolve("/etc/istio/config/mesh").unwrap().real,
                "/var/lib/istio/config/mesh"
            );
            // Final component is not followed.
            assert_eq!(r.resolve("/etc/istio").unwrap().real, "/etc/istio");
            // Plain paths, existing or not.
            assert_eq!(r.resolve("/etc/hosts").unwrap().real, "/etc/hosts");
            assert_eq!(r.resolve("/a/b/c").unwrap().real, "/a/b/c");
            assert_eq!(r.resolve("/").unwrap().real, "/");
            // A dangling in-root link among the parents names its target.
            symlink("/data/varlib", d.join("var/lib2")).unwrap();
            assert_eq!(
                r.resolve("/var/lib2/istio-vm/state.json").unwrap().real,
                "/data/varlib/istio-vm/state.json"
            );
            // Loops end.
            symlink("/loop", d.join("loop")).unwrap();
            assert!(r.resolve("/loop/x").is_err());
            // A file among the parents.
            std::fs::write(d.join("etc/file"), "").unwrap();
            let e = r.resolve("/etc/file/x").unwrap_err();
            assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
        });
    }

    #[test]
    fn foreign_parent_links_are_refused_for_writing() {
        both(|r, d| {
            std::fs::create_dir_all(d.join("var/lib/istio")).unwrap();
            std::fs::create_dir_all(d.join("etc")).unwrap();
            symlink("/var/lib/istio", d.join("etc/istio")).unwrap();
            assert!(r.resolve("/etc/istio/x").is_ok());
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &d.join("etc/istio"),
                Some(65534.into()),
                Some(65534.into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let e = r.resolve("/etc/istio/x").unwrap_err();
            assert!(format!("{e:#}").contains("not by root"), "{e:#}");
        });
    }

    #[test]
    fn reads_follow_links_inside_the_root_only() {
        both(|r, d| {
            std::fs::create_dir_all(d.join("etc")).unwrap();
            std::fs::create_dir_all(d.join("run/systemd/resolve")).unwrap();
            std::fs::write(
                d.join("run/systemd/resolve/stub-resolv.conf"),
                "nameserver 127.0.0.53\n",
            )
            .unwrap();
            symlink(
                "/run/systemd/resolve/stub-resolv.conf",
                d.join("etc/resolv.conf"),
            )
            .unwrap();
            assert_eq!(r.resolv_conf().unwrap(), "nameserver 127.0.0.53\n");
            assert!(r.read("/etc/nothing").unwrap().is_none());
            assert!(r.read("/nothing/at/all").unwrap().is_none());
            // A link to the host's passwd reads the root's own.
            std::fs::write(d.join("etc/real-passwd"), "istio-proxy:x:7:8::/:/x\n").unwrap();
            symlink("/etc/real-passwd", d.join("etc/passwd")).unwrap();
            symlink("../../../../../../../../etc/gr", d.join("etc/group")).unwrap();
            assert_eq!(
                r.user("istio-proxy").unwrap(),
                Some(UserIds { uid: 7, gid: 8 })
            );
            // ../ escapes land on ROOT/etc/gr, which does not exist.
            assert_eq!(r.group("istio-proxy").unwrap(), None);
            assert_eq!(r.user("root").unwrap(), None, "never the host's root");
            let f = r.open("/etc/passwd").unwrap().unwrap();
            assert!(same_file(&f, &d.join("etc/real-passwd")));
            let st = r.stat("/etc/passwd").unwrap().unwrap();
            assert_eq!(st.kind, Kind::File);
            assert_eq!(r.stat("/etc").unwrap().unwrap().kind, Kind::Dir);
            assert_eq!(r.stat("/etc/passwd/x").unwrap(), None);
            assert_eq!(r.list_dir("/etc").unwrap().len(), 4);
            assert!(r.list_dir("/nothing").unwrap().is_empty());
        });
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        both(|r, d| {
            std::fs::create_dir_all(d.join("etc")).unwrap();
            for name in ["passwd", "group", "resolv.conf"] {
                nix::unistd::mkfifo(&d.join("etc").join(name), nix::sys::stat::Mode::S_IRUSR)
                    .unwrap();
            }
            let e = r.user("istio-proxy").unwrap_err();
            assert!(format!("{e:#}").contains("/etc/passwd is a FIFO"), "{e:#}");
            assert!(r.group("istio-proxy").is_err());
            assert!(r.resolv_conf().is_err());
            symlink("/dev/zero", d.join("etc/zero")).unwrap();
            // Inside the root /dev/zero does not exist.
            assert!(r.read("/etc/zero").unwrap().is_none());
            std::fs::create_dir_all(d.join("dev")).unwrap();
            nix::sys::stat::mknod(
                &d.join("dev/zero"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 5),
            )
            .unwrap();
            let e = r.read("/etc/zero").unwrap_err();
            assert!(format!("{e:#}").contains("character device"), "{e:#}");
            assert!(r.read("/etc").is_err(), "a directory is not read");
            // Size cap.
            std::fs::write(d.join("big"), vec![b'x'; 100]).unwrap();
            assert!(r.read_capped("/big", 99).is_err());
            assert_eq!(r.read_capped("/big", 100).unwrap().unwrap().len(), 100);
            assert_eq!(r.tail("/big", 10).unwrap().unwrap().len(), 10);
        });
    }

    #[test]
    fn host_files_are_bounded_too() {
        let e = read_host_file(Path::new("/dev/zero"), READ_CAP).unwrap_err();
        assert!(format!("{e:#}").contains("character device"), "{e:#}");
        let d = tempfile::tempdir().unwrap();
        assert!(read_host_file(&d.path().join("x"), 10).unwrap().is_none());
        std::fs::write(d.path().join("y"), "abc").unwrap();
        assert_eq!(
            read_host_file(&d.path().join("y"), 10).unwrap().unwrap(),
            b"abc"
        );
    }

    #[test]
    fn root_must_be_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "").unwrap();
        let e = Sysroot::new(&d.path().join("f")).unwrap_err();
        assert!(format!("{e:#}").contains("is not a directory"), "{e:#}");
        let e = Sysroot::new(&d.path().join("nope")).unwrap_err();
        assert!(format!("{e:#}").contains("no such directory"), "{e:#}");
    }

    #[test]
    fn live_users_come_from_nss() {
        let r = Sysroot::new(Path::new("/")).unwrap();
        assert!(r.is_live());
        // uid 0 is root on every host, whatever the source.
        assert_eq!(r.user("root").unwrap().map(|u| u.uid), Some(0));
    }

    #[test]
    fn dpkg_status_versions() {
        both(|r, d| {
            std::fs::create_dir_all(d.join("var/lib/dpkg")).unwrap();
            std::fs::write(
                d.join("var/lib/dpkg/status"),
                "Package: istio-sidecar\nStatus: deinstall ok config-files\nVersion: 1.9.0\n\n\
                 Package: other\nStatus: install ok installed\nVersion: 2\nDescription: x\n \
                 Package: istio-sidecar\n\n\
                 Package: istio-sidecar\nStatus: install ok installed\nVersion: 1:1.24.2-1\n",
            )
            .unwrap();
            let p = r.installed_package("istio-sidecar").unwrap().unwrap();
            assert_eq!(p.version, "1:1.24.2-1");
            assert_eq!(p.source, PackageDb::Dpkg);
            assert_eq!(r.installed_package("nothing").unwrap(), None);
        });
    }

    #[test]
    fn rpm_database_versions() {
        // A real rpm database in the root, holding a package built here.
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        std::fs::write(
            w.join("s.spec"),
            "Name: istio-sidecar\nVersion: 1.24.2\nRelease: 3\nSummary: t\nLicense: MIT\n\
             BuildArch: noarch\n%description\nt\n%files\n",
        )
        .unwrap();
        let top = format!("_topdir {}", w.join("top").display());
        let st = std::process::Command::new("rpmbuild")
            .args(["--define", &top, "-bb", "--quiet"])
            .arg(w.join("s.spec"))
            .status()
            .expect("rpmbuild (package rpm)");
        assert!(st.success());
        let pkg = w.join("top/RPMS/noarch/istio-sidecar-1.24.2-3.noarch.rpm");
        both(|r, d| {
            let rpm = |args: &[&str]| {
                let st = std::process::Command::new("rpm")
                    .arg("--root")
                    .arg(d)
                    .args(["--dbpath", "/var/lib/rpm"])
                    .args(args)
                    .status()
                    .unwrap();
                assert!(st.success(), "rpm {args:?}");
            };
            rpm(&["--initdb"]);
            assert_eq!(r.installed_package("istio-sidecar").unwrap(), None);
            rpm(&["-i", "--justdb", "--nodeps", pkg.to_str().unwrap()]);
            let p = r.installed_package("istio-sidecar").unwrap().unwrap();
            assert_eq!(p.version, "1.24.2-3");
            assert_eq!(p.source, PackageDb::Rpm);
        });
    }
}
