//! Bundle sources: a directory, a .tar.gz of one, an https:// URL.
//!
//! This is the only place that reads a bundle from outside. It enforces the
//! limits (1 MiB per file, 16 MiB unpacked, 16 MiB downloaded) and refuses tar
//! entries that could escape or alias (absolute, `..`, links, devices), before
//! any content is parsed.
//!
//! `--sha256` means:
//! - for a `.tar.gz` file or a URL: SHA-256 of the archive bytes, as
//!   `sha256sum bundle.tar.gz` prints it; checked before anything is unpacked;
//! - for a directory: the bundle digest ([`Bundle::digest`]), a SHA-256 over
//!   the bundle files' names and contents. A mismatch finding prints the actual
//!   digest, so it can be recorded from a bundle known to be good.
//!
//! URLs are fetched over rustls, trusting the built-in Mozilla roots plus the
//! PEM certificates in the file named by `SSL_CERT_FILE`, if set (the usual
//! variable for an extra CA bundle, e.g. a private mirror's CA).

use std::io::Read;
use std::path::{Component, Path};
use std::time::Duration;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use super::{Bundle, FILES};
use crate::extra_ca::io_reason;
use crate::report::Finding;

/// Largest bundle file; real ones are a few KiB.
pub const MAX_FILE: u64 = 1024 * 1024;
/// Largest unpacked archive, and largest archive or download.
pub const MAX_TOTAL: u64 = 16 * 1024 * 1024;
/// Variable naming an extra PEM CA bundle for https:// sources.
pub use crate::extra_ca::CA_FILE_ENV;

/// How a bundle is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Total time a download may take, from connecting to the last byte: a
    /// server trickling bytes must not hold the run past it.
    pub fetch_timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            fetch_timeout: Duration::from_secs(60),
        }
    }
}

const HINT_REGENERATE: &str = "use the files `istioctl x workload entry configure -o DIR` wrote, \
    as a directory or packed with `tar czf bundle.tar.gz -C DIR .`";

fn finding(code: &str, file: Option<&str>, msg: impl Into<String>, hint: &str) -> Vec<Finding> {
    vec![Finding::error(code, file, msg, hint)]
}

/// True when `src` is fetched over the network.
pub fn is_url(src: &str) -> bool {
    src.starts_with("https://") || src.starts_with("http://")
}

/// Usage checks of `--bundle`/`--sha256` (exit 2 when they fail): a URL must be
/// https and needs `--sha256`; `--sha256` must be 64 hex digits.
pub fn check_args(src: &str, sha256: Option<&str>) -> Result<(), String> {
    if src.is_empty() {
        return Err("--bundle is empty".into());
    }
    if let Some(h) = sha256
        && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!(
            "--sha256 must be 64 hex digits (as `sha256sum` prints), got {} characters",
            h.len()
        ));
    }
    if src.starts_with("http://") {
        return Err("a bundle URL must be https:// (the bundle holds a credential)".into());
    }
    if src.starts_with("https://") && sha256.is_none() {
        return Err(
            "--sha256 is required with a URL bundle: run `sha256sum bundle.tar.gz` where \
             the bundle was made and pass the digest"
                .into(),
        );
    }
    Ok(())
}

/// Read a bundle. Files that are missing are simply absent from the result
/// (validation reports them as `bundle.missing_file`); problems with the source
/// itself (unsafe archive, too large, checksum, unreadable) are findings.
pub fn load(src: &str, sha256: Option<&str>) -> Result<Bundle, Vec<Finding>> {
    load_with(src, sha256, &LoadOptions::default())
}

/// [`load`] with explicit options.
pub fn load_with(
    src: &str,
    sha256: Option<&str>,
    opts: &LoadOptions,
) -> Result<Bundle, Vec<Finding>> {
    if let Err(msg) = check_args(src, sha256) {
        return Err(finding("bundle.checksum", None, msg, HINT_REGENERATE));
    }
    let sha256 = sha256.map(str::to_ascii_lowercase);
    if is_url(src) {
        let bytes = fetch(src, opts.fetch_timeout)?;
        check_sha(&bytes, sha256.as_deref(), src)?;
        return unpack(&bytes);
    }
    let path = Path::new(src);
    let meta = std::fs::metadata(path).map_err(|e| {
        finding(
            "bundle.missing_file",
            None,
            format!("cannot read bundle {src}: {}", io_reason(&e)),
            "pass the directory `istioctl x workload entry configure -o DIR` wrote, \
             a .tar.gz of it, or an https:// URL",
        )
    })?;
    if meta.is_dir() {
        let bundle = read_dir(path)?;
        if let Some(want) = sha256.as_deref() {
            let got = bundle.digest();
            if got != want {
                return Err(finding(
                    "bundle.checksum",
                    None,
                    format!("bundle digest of directory {src} is {got}, expected {want}"),
                    "the files differ from the bundle the digest was taken of; for a \
                     directory --sha256 is the bundle digest (for a .tar.gz, the archive's \
                     sha256sum)",
                ));
            }
        }
        return Ok(bundle);
    }
    if !meta.is_file() {
        return Err(finding(
            "bundle.unsafe_path",
            None,
            format!("{src} is neither a directory nor a regular file"),
            HINT_REGENERATE,
        ));
    }
    if meta.len() > MAX_TOTAL {
        return Err(finding(
            "bundle.too_large",
            None,
            format!(
                "{src} is {} bytes; a bundle archive is at most {MAX_TOTAL}",
                meta.len()
            ),
            HINT_REGENERATE,
        ));
    }
    let bytes = read_limited(path, MAX_TOTAL, false).map_err(|e| {
        finding(
            "bundle.missing_file",
            None,
            format!("cannot read {src}: {}", io_reason(&e)),
            HINT_REGENERATE,
        )
    })?;
    check_sha(&bytes, sha256.as_deref(), src)?;
    unpack(&bytes)
}

fn check_sha(bytes: &[u8], want: Option<&str>, src: &str) -> Result<(), Vec<Finding>> {
    let Some(want) = want else { return Ok(()) };
    let got = format!("{:x}", Sha256::digest(bytes));
    if got != want {
        return Err(finding(
            "bundle.checksum",
            None,
            format!("SHA-256 of {} is {got}, expected {want}", redact_url(src)),
            "the archive is not the one the digest was taken of (changed, truncated or \
             replaced): fetch it again or check the digest",
        ));
    }
    Ok(())
}

/// Read at most `limit` bytes of a regular file; more is an error (the caller
/// checked the size, this guards a file that grows while read). Opened
/// non-blocking and checked on the descriptor, so a file swapped for a FIFO
/// after the caller's check cannot hang us.
fn read_limited(path: &Path, limit: u64, nofollow: bool) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY;
    if nofollow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(buf)
}

fn too_large(name: &str, size: u64) -> Vec<Finding> {
    finding(
        "bundle.too_large",
        Some(name),
        format!("{name} is {size} bytes; a bundle file is at most {MAX_FILE}"),
        "this is not a file istioctl writes (they are a few KiB): check you packed \
         the right directory",
    )
}

fn read_dir(dir: &Path) -> Result<Bundle, Vec<Finding>> {
    let mut bundle = Bundle::default();
    let mut findings = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        // A symlink is refused like in an archive: a bundle directory written by
        // a less trusted user must not make us read (and later place) any file
        // root can read. The directory itself is the operator's own argument.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                findings.extend(finding(
                    "bundle.missing_file",
                    Some(name),
                    format!("cannot read {name}: {}", io_reason(&e)),
                    "make the file readable by the user running istio-vm",
                ));
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            findings.extend(finding(
                "bundle.unsafe_path",
                Some(name),
                format!("{name} is a symbolic link"),
                "copy the file itself into the bundle directory (`cp -L`)",
            ));
            continue;
        }
        if !meta.is_file() {
            findings.extend(finding(
                "bundle.unsafe_path",
                Some(name),
                format!("{name} is not a regular file"),
                HINT_REGENERATE,
            ));
            continue;
        }
        if meta.len() > MAX_FILE {
            findings.extend(too_large(name, meta.len()));
            continue;
        }
        match read_limited(&path, MAX_FILE, true) {
            Ok(bytes) => {
                bundle.files.insert(name.to_string(), bytes);
            }
            Err(e) => findings.extend(finding(
                "bundle.missing_file",
                Some(name),
                format!("cannot read {name}: {}", io_reason(&e)),
                "make the file readable by the user running istio-vm",
            )),
        }
    }
    if findings.is_empty() {
        Ok(bundle)
    } else {
        Err(findings)
    }
}

/// Unpack a .tar.gz held in memory. The bundle files are taken from the top
/// level or from a single top-level folder; other files are ignored.
fn unpack(bytes: &[u8]) -> Result<Bundle, Vec<Finding>> {
    let not_archive = |detail: String| {
        finding(
            "bundle.archive",
            None,
            format!("not a readable .tar.gz: {detail}"),
            HINT_REGENERATE,
        )
    };
    if bytes.len() < 2 || bytes[..2] != [0x1f, 0x8b] {
        return Err(not_archive("no gzip header".into()));
    }
    // The decompressed stream is bounded: headers count too, so a tar of
    // millions of empty entries cannot spin forever. Reaching the bound is an
    // error, not an end of file: a cut-off archive would otherwise read as
    // one that lacks the bundle files.
    let capped = std::rc::Rc::new(std::cell::Cell::new(false));
    let gz = Capped {
        inner: GzDecoder::new(bytes),
        left: MAX_TOTAL + 64 * 1024,
        hit: capped.clone(),
    };
    let over_cap = || {
        finding(
            "bundle.too_large",
            None,
            format!("the archive unpacks to more than {MAX_TOTAL} bytes"),
            HINT_REGENERATE,
        )
    };
    let result = unpack_entries(gz, not_archive);
    if capped.get() {
        return Err(over_cap());
    }
    result
}

/// A reader that fails (and says so in `hit`) past `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // More data beyond the cap (not a clean end at exactly the cap)?
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.hit.set(true);
            return Err(std::io::Error::other(
                "archive larger than the unpack limit",
            ));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

fn unpack_entries(
    gz: impl Read,
    not_archive: impl Fn(String) -> Vec<Finding>,
) -> Result<Bundle, Vec<Finding>> {
    let mut archive = tar::Archive::new(gz);
    let entries = archive.entries().map_err(|e| not_archive(e.to_string()))?;
    // (components below the root, bytes)
    let mut found: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
    let mut total: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| not_archive(e.to_string()))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let unsafe_entry = |why: &str| {
            finding(
                "bundle.unsafe_path",
                None,
                format!("archive entry `{shown}` {why}"),
                "a bundle archive holds only the five regular files (optionally in one \
                 folder); repack it with `tar czf bundle.tar.gz -C DIR .`",
            )
        };
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory => {}
            // Metadata entries the tar crate folds into the next entry.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            T::Symlink => return Err(unsafe_entry("is a symbolic link")),
            T::Link => return Err(unsafe_entry("is a hard link")),
            T::Char | T::Block => return Err(unsafe_entry("is a device")),
            T::Fifo => return Err(unsafe_entry("is a FIFO")),
            _ => return Err(unsafe_entry("is not a regular file or directory")),
        }
        let Ok(path_str) = std::str::from_utf8(&raw_path) else {
            return Err(unsafe_entry("has a name that is not UTF-8"));
        };
        if path_str.starts_with('/') {
            return Err(unsafe_entry("is an absolute path"));
        }
        let mut comps = Vec::new();
        for c in Path::new(path_str).components() {
            match c {
                Component::Normal(s) => comps.push(s.to_string_lossy().into_owned()),
                Component::CurDir => {}
                Component::ParentDir => return Err(unsafe_entry("contains `..`")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(unsafe_entry("is an absolute path"));
                }
            }
        }
        if kind == T::Directory || comps.is_empty() {
            continue;
        }
        let name = comps.last().cloned().unwrap_or_default();
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_FILE {
            return Err(too_large(&name, size));
        }
        if total + size > MAX_TOTAL {
            return Err(finding(
                "bundle.too_large",
                None,
                format!("the archive unpacks to more than {MAX_TOTAL} bytes"),
                HINT_REGENERATE,
            ));
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_FILE + 1)
            .read_to_end(&mut data)
            .map_err(|e| not_archive(e.to_string()))?;
        if data.len() as u64 > MAX_FILE {
            return Err(too_large(&name, data.len() as u64));
        }
        total += data.len() as u64;
        if total > MAX_TOTAL {
            return Err(finding(
                "bundle.too_large",
                None,
                format!("the archive unpacks to more than {MAX_TOTAL} bytes"),
                HINT_REGENERATE,
            ));
        }
        if FILES.contains(&name.as_str()) && comps.len() <= 2 {
            found.push((comps, data));
        }
    }
    // Flat layout wins; else exactly one top-level folder may hold the files.
    let flat: Vec<_> = found.iter().filter(|(c, _)| c.len() == 1).collect();
    let chosen: Vec<&(Vec<String>, Vec<u8>)> = if !flat.is_empty() {
        flat
    } else {
        let mut tops: Vec<&str> = found.iter().map(|(c, _)| c[0].as_str()).collect();
        tops.sort();
        tops.dedup();
        if tops.len() > 1 {
            return Err(finding(
                "bundle.archive",
                None,
                format!(
                    "bundle files in several folders ({}); which one is the bundle?",
                    tops.join(", ")
                ),
                "pack one bundle per archive",
            ));
        }
        found.iter().collect()
    };
    let mut bundle = Bundle::default();
    for (comps, data) in chosen {
        let name = comps.last().expect("non-empty").clone();
        if bundle.files.insert(name.clone(), data.clone()).is_some() {
            return Err(finding(
                "bundle.archive",
                Some(&name),
                format!("{name} appears twice in the archive"),
                "pack one bundle per archive",
            ));
        }
    }
    Ok(bundle)
}

/// Download `url` (https only, redirects only to https), at most MAX_TOTAL
/// bytes, within `deadline` from start to the last byte.
fn fetch(url: &str, deadline: Duration) -> Result<Vec<u8>, Vec<Finding>> {
    let fail = |msg: String, hint: &str| finding("bundle.fetch", None, msg, hint);
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .connect_timeout(deadline.min(Duration::from_secs(10)))
        // The deadline below answers first; this only backs it up.
        .timeout(deadline + Duration::from_secs(1))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("istio-vm/", env!("CARGO_PKG_VERSION")));
    for c in crate::extra_ca::roots().map_err(|msg| fail(msg, crate::extra_ca::HINT))? {
        builder = builder.add_root_certificate(c);
    }
    let client = builder.build().map_err(|e| {
        fail(
            format!("cannot set up HTTPS: {}", chain(&e.without_url())),
            "",
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the HTTP client: {e}"), ""))?;
    // One deadline over connection, headers and body.
    match rt.block_on(async { tokio::time::timeout(deadline, download(&client, url)).await }) {
        Ok(r) => r,
        Err(_) => Err(fail(
            format!(
                "download of {} did not finish within {}s",
                redact_url(url),
                deadline.as_secs_f64()
            ),
            "the server is too slow or stalled: check it, or raise fetch_timeout in \
             /etc/istio-vm/config.toml (ISTIO_VM_FETCH_TIMEOUT)",
        )),
    }
}

async fn download(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, Vec<Finding>> {
    let fail = |msg: String, hint: &str| finding("bundle.fetch", None, msg, hint);
    let shown = redact_url(url);
    // reqwest's errors name the URL (with its credentials): drop it, ours
    // is redacted.
    let mut resp = client.get(url).send().await.map_err(|e| {
        fail(
            format!("cannot fetch {shown}: {}", chain(&e.without_url())),
            "check the URL, the network, and that the server's certificate chains to a \
             trusted CA (an extra CA can be given with SSL_CERT_FILE)",
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(fail(
            format!("{shown} answered HTTP {status}"),
            "check the URL (a signed URL may have expired)",
        ));
    }
    let too_large = || {
        finding(
            "bundle.too_large",
            None,
            format!("{shown} is larger than {MAX_TOTAL} bytes"),
            HINT_REGENERATE,
        )
    };
    if resp.content_length().is_some_and(|n| n > MAX_TOTAL) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        fail(
            format!("download of {shown} failed: {}", chain(&e.without_url())),
            "",
        )
    })? {
        if (buf.len() + chunk.len()) as u64 > MAX_TOTAL {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

pub use crate::report::redact_url;

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let h = "a".repeat(64);
        assert!(check_args("dir", None).is_ok());
        assert!(check_args("https://x/b.tgz", Some(&h)).is_ok());
        assert!(check_args("https://x/b.tgz", None).is_err());
        assert!(check_args("http://x/b.tgz", Some(&h)).is_err());
        assert!(check_args("dir", Some("abc")).is_err());
        assert!(check_args("dir", Some(&"g".repeat(64))).is_err());
        assert!(check_args("", None).is_err());
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact_url("https://h/b?sig=1"), "https://h/b?…");
        assert_eq!(
            redact_url("https://user:pw@h:8443/b.tgz?X-Amz-Signature=s#t"),
            "https://…@h:8443/b.tgz?…#…"
        );
        assert_eq!(redact_url("https://h/b.tgz"), "https://h/b.tgz");
        for bad in ["https://u:p@[zz/b?s", "ht tp://u:p@h/x#f"] {
            let r = redact_url(bad);
            assert!(
                !r.contains("p@") && !r.contains('?') && !r.contains('#'),
                "{r}"
            );
        }
    }

    use std::io::Write;
    use std::os::unix::fs::symlink;

    fn codes(r: &Result<Bundle, Vec<Finding>>) -> Vec<&str> {
        match r {
            Ok(_) => vec!["ok"],
            Err(f) => f.iter().map(|x| x.code.as_str()).collect(),
        }
    }

    /// The single finding of a refused source.
    fn refused(r: Result<Bundle, Vec<Finding>>) -> Finding {
        let f = r.expect_err("the source must be refused");
        assert_eq!(f.len(), 1, "{f:?}");
        f.into_iter().next().unwrap()
    }

    fn names(b: &Bundle) -> Vec<&str> {
        b.files.keys().map(String::as_str).collect()
    }

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    /// A tar stream of regular files.
    fn tar_of(files: &[(&str, &[u8])]) -> tar::Builder<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let h = header(path, tar::EntryType::Regular, data.len() as u64);
            b.append(&h, *data).unwrap();
        }
        b
    }

    /// Gzip `tar` as it stands (finished or cut off by the caller).
    fn gz(tar: &[u8]) -> Vec<u8> {
        // Stored blocks: the big archives here would take long to deflate
        // in a debug build, and unpacking reads them the same way.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        e.write_all(tar).unwrap();
        e.finish().unwrap()
    }

    fn tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        gz(&tar_of(files).into_inner().unwrap())
    }

    fn sha(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    #[test]
    fn a_directory_gives_the_bundle_files_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.env"), "A='1'\n").unwrap();
        std::fs::write(dir.path().join("hosts"), "198.51.100.1 a\n").unwrap();
        std::fs::write(dir.path().join("README"), "not a bundle file").unwrap();
        let src = dir.path().to_str().unwrap();
        let b = load(src, None).unwrap();
        assert_eq!(names(&b), ["cluster.env", "hosts"]);
        assert_eq!(b.files["cluster.env"], b"A='1'\n");
        assert_eq!(b.files["hosts"], b"198.51.100.1 a\n");
        // --sha256 of a directory is the bundle digest, in either case.
        let digest = b.digest();
        assert_eq!(load(src, Some(&digest)).unwrap(), b);
        assert_eq!(load(src, Some(&digest.to_uppercase())).unwrap(), b);
        let f = refused(load(src, Some(&"0".repeat(64))));
        assert_eq!(f.code, "bundle.checksum");
        assert!(f.message.contains(&digest), "{}", f.message);
    }

    #[test]
    fn a_directory_file_is_at_most_one_mib() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, len: u64| {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(len).unwrap();
        };
        file("cluster.env", MAX_FILE);
        let src = dir.path().to_str().unwrap();
        let b = load(src, None).unwrap();
        assert_eq!(b.files["cluster.env"].len() as u64, MAX_FILE);
        file("hosts", MAX_FILE + 1);
        let f = refused(load(src, None));
        assert_eq!(f.code, "bundle.too_large");
        assert_eq!(f.file.as_deref(), Some("hosts"));
        assert!(
            f.message.starts_with("hosts is 1048577 bytes"),
            "{}",
            f.message
        );
    }

    #[test]
    fn links_and_other_kinds_in_a_directory_are_each_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), "A='1'\n").unwrap();
        symlink(dir.path().join("real"), dir.path().join("cluster.env")).unwrap();
        std::fs::create_dir(dir.path().join("hosts")).unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), "{}\n").unwrap();
        let f = load(dir.path().to_str().unwrap(), None).unwrap_err();
        let got: Vec<_> = f
            .iter()
            .map(|x| (x.code.as_str(), x.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("bundle.unsafe_path", "cluster.env is a symbolic link"),
                ("bundle.unsafe_path", "hosts is not a regular file"),
            ]
        );
    }

    #[test]
    fn a_file_that_cannot_be_examined_is_not_taken_as_missing() {
        // Every name below a regular file fails with ENOTDIR, not ENOENT.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let f = read_dir(&file).unwrap_err();
        let named: Vec<_> = f
            .iter()
            .map(|x| (x.code.as_str(), x.file.as_deref().unwrap()))
            .collect();
        assert_eq!(named, FILES.map(|n| ("bundle.missing_file", n)));
        // A missing file is left to validation.
        assert_eq!(read_dir(dir.path()).unwrap(), Bundle::default());
    }

    #[test]
    fn a_source_is_a_directory_or_a_regular_file() {
        let f = refused(load("/dev/null", None));
        assert_eq!(f.code, "bundle.unsafe_path");
        assert!(f.message.contains("neither a directory"), "{}", f.message);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.tar.gz");
        let f = refused(load(missing.to_str().unwrap(), None));
        assert_eq!(f.code, "bundle.missing_file");
        assert!(f.message.contains("no such file"), "{}", f.message);
    }

    #[test]
    fn an_archive_file_is_read_up_to_sixteen_mib() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.tar.gz");
        let f = std::fs::File::create(&path).unwrap();
        let src = path.to_str().unwrap();
        // At the limit the file is read (and found not to be gzip).
        f.set_len(MAX_TOTAL).unwrap();
        let got = refused(load(src, None));
        assert_eq!(
            (got.code.as_str(), got.message.as_str()),
            ("bundle.archive", "not a readable .tar.gz: no gzip header")
        );
        f.set_len(MAX_TOTAL + 1).unwrap();
        let got = refused(load(src, None));
        assert_eq!(got.code, "bundle.too_large");
        assert!(got.message.contains("16777217 bytes"), "{}", got.message);
    }

    #[test]
    fn an_archive_file_is_checked_against_its_sha256() {
        let bytes = tgz(&[("cluster.env", b"A='1'\n")]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.tar.gz");
        std::fs::write(&path, &bytes).unwrap();
        let src = path.to_str().unwrap();
        let b = load(src, Some(&sha(&bytes))).unwrap();
        assert_eq!(b.files["cluster.env"], b"A='1'\n");
        assert_eq!(load(src, None).unwrap(), b);
        let f = refused(load(src, Some(&sha(b"other"))));
        assert_eq!(f.code, "bundle.checksum");
        assert!(f.message.contains(&sha(&bytes)), "{}", f.message);
    }

    #[test]
    fn read_limited_reads_a_regular_file_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abcd").unwrap();
        assert_eq!(read_limited(&path, 4, true).unwrap(), b"abcd");
        let e = read_limited(&path, 3, true).unwrap_err();
        assert_eq!(e.to_string(), "larger than 3 bytes");
        let link = dir.path().join("link");
        symlink(&path, &link).unwrap();
        assert_eq!(read_limited(&link, 4, false).unwrap(), b"abcd");
        let e = read_limited(&link, 4, true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP), "{e}");
    }

    #[test]
    fn read_limited_does_not_wait_for_a_fifo_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_limited(&fifo, 4, true).map_err(|e| e.to_string()));
        });
        // A blocking open would wait for a writer forever.
        let got = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("opening a FIFO blocked");
        assert_eq!(got, Err("not a regular file".to_string()));
    }

    #[test]
    fn a_flat_archive_gives_only_the_bundle_files() {
        let mut t = tar::Builder::new(Vec::new());
        for dir in ["./", "mesh.yaml/"] {
            t.append(&header(dir, tar::EntryType::Directory, 0), &b""[..])
                .unwrap();
        }
        for (path, data) in [
            ("./cluster.env", &b"A='1'\n"[..]),
            ("hosts", b"198.51.100.1 a\n"),
            ("README", b"x"),
            ("folder/root-cert.pem", b"x"),
            ("a/b/istio-token", b"x"),
        ] {
            let h = header(path, tar::EntryType::Regular, data.len() as u64);
            t.append(&h, data).unwrap();
        }
        let b = unpack(&gz(&t.into_inner().unwrap())).unwrap();
        assert_eq!(names(&b), ["cluster.env", "hosts"]);
        assert_eq!(b.files["hosts"], b"198.51.100.1 a\n");
    }

    #[test]
    fn the_bundle_may_be_in_one_folder_but_not_several() {
        let b = unpack(&tgz(&[
            ("bundle/cluster.env", b"1"),
            ("bundle/hosts", b"2"),
        ]))
        .unwrap();
        assert_eq!(names(&b), ["cluster.env", "hosts"]);
        let f = refused(unpack(&tgz(&[
            ("c/hosts", b"1"),
            ("a/hosts", b"2"),
            ("b/cluster.env", b"3"),
        ])));
        assert_eq!(f.code, "bundle.archive");
        assert!(
            f.message.contains("several folders (a, b, c)"),
            "{}",
            f.message
        );
        let f = refused(unpack(&tgz(&[("hosts", b"1"), ("./hosts", b"2")])));
        assert_eq!(f.message, "hosts appears twice in the archive");
    }

    #[test]
    fn entries_other_than_files_and_folders_are_refused_by_kind() {
        use tar::EntryType as T;
        for (kind, why) in [
            (T::Symlink, "is a symbolic link"),
            (T::Link, "is a hard link"),
            (T::Char, "is a device"),
            (T::Block, "is a device"),
            (T::Fifo, "is a FIFO"),
            (T::new(b'Z'), "is not a regular file or directory"),
        ] {
            let mut h = header("hosts", kind, 0);
            if matches!(kind, T::Symlink | T::Link) {
                h.set_link_name("cluster.env").unwrap();
                h.set_cksum();
            }
            let mut t = tar::Builder::new(Vec::new());
            t.append(&h, &b""[..]).unwrap();
            let f = refused(unpack(&gz(&t.into_inner().unwrap())));
            assert_eq!(f.code, "bundle.unsafe_path", "{kind:?}");
            assert_eq!(f.message, format!("archive entry `hosts` {why}"));
        }
    }

    #[test]
    fn a_pax_global_header_is_metadata_not_a_file() {
        // As `git archive` writes it first.
        let mut t = tar::Builder::new(Vec::new());
        let pax = b"52 comment=0123456789012345678901234567890123456789\n";
        let h = header("pax_global_header", tar::EntryType::XGlobalHeader, 52);
        t.append(&h, &pax[..]).unwrap();
        let h = header("hosts", tar::EntryType::Regular, 1);
        t.append(&h, &b"1"[..]).unwrap();
        let b = unpack(&gz(&t.into_inner().unwrap())).unwrap();
        assert_eq!(names(&b), ["hosts"]);
    }

    #[test]
    fn only_gzip_is_unpacked() {
        for bytes in [&b""[..], b"\x1f", b"PK\x03\x04 a zip file"] {
            let f = refused(unpack(bytes));
            assert_eq!(
                (f.code.as_str(), f.message.as_str()),
                ("bundle.archive", "not a readable .tar.gz: no gzip header"),
                "{bytes:?}"
            );
        }
        // The magic alone passes on to the decoder.
        let r = unpack(b"\x1f\x8b");
        assert!(
            r.as_ref()
                .is_err_and(|f| f[0].message != "not a readable .tar.gz: no gzip header"),
            "{:?}",
            codes(&r)
        );
    }

    /// Sixteen files of 1 MiB (exactly the unpack limit), without the end
    /// of the archive.
    fn at_the_limit() -> Vec<u8> {
        let big = vec![b'x'; MAX_FILE as usize];
        let names: Vec<String> = (1..16).map(|i| format!("pad{i}")).collect();
        let mut files: Vec<(&str, &[u8])> = vec![("cluster.env", &big)];
        files.extend(names.iter().map(|n| (n.as_str(), &big[..])));
        std::mem::take(tar_of(&files).get_mut())
    }

    #[test]
    fn an_archive_unpacks_to_at_most_sixteen_mib() {
        let full = at_the_limit();
        let end = [0u8; 1024];
        let b = unpack(&gz(&[&full[..], &end].concat())).unwrap();
        assert_eq!(names(&b), ["cluster.env"]);
        assert_eq!(b.files["cluster.env"].len() as u64, MAX_FILE);
        let over = |t: &[u8]| {
            let f = refused(unpack(&gz(t)));
            assert_eq!(f.code, "bundle.too_large");
            assert_eq!(f.message, "the archive unpacks to more than 16777216 bytes");
        };
        // One byte more.
        let hosts = header("hosts", tar::EntryType::Regular, 1);
        let mut one = [0u8; 512];
        one[0] = b'1';
        over(&[&full[..], hosts.as_bytes(), &one, &end].concat());
        // A header announcing that byte is enough: the archive is cut off
        // right after it.
        over(&[&full[..], hosts.as_bytes()].concat());
    }

    #[test]
    fn a_file_over_one_mib_is_refused_by_its_header_or_its_data() {
        // The header alone announces 2 MiB (the archive ends there).
        let t = header("hosts", tar::EntryType::Regular, 2 * MAX_FILE);
        let f = refused(unpack(&gz(t.as_bytes())));
        assert_eq!(f.code, "bundle.too_large");
        assert!(
            f.message.starts_with("hosts is 2097152 bytes"),
            "{}",
            f.message
        );
        // A pax `size` overrides the header's 0 for the data that follows.
        let mut t = tar::Builder::new(Vec::new());
        let pax = b"16 size=1048577\n";
        t.append(&header("pax", tar::EntryType::XHeader, 16), &pax[..])
            .unwrap();
        let data = vec![b'x'; MAX_FILE as usize + 1];
        t.append(&header("hosts", tar::EntryType::Regular, 0), &data[..])
            .unwrap();
        let f = refused(unpack(&gz(&t.into_inner().unwrap())));
        assert_eq!(f.code, "bundle.too_large");
        assert!(
            f.message.starts_with("hosts is 1048577 bytes"),
            "{}",
            f.message
        );
    }

    #[test]
    fn headers_alone_cannot_unpack_past_the_cap() {
        // Empty entries add nothing to the unpacked size, only to the stream.
        let mut t = tar::Builder::new(Vec::new());
        let count = (MAX_TOTAL + 64 * 1024) / 512 + 1;
        let h = header("e", tar::EntryType::Regular, 0);
        for _ in 0..count {
            t.get_mut().extend_from_slice(h.as_bytes());
        }
        let f = refused(unpack(&gz(&t.into_inner().unwrap())));
        assert_eq!(
            (f.code.as_str(), f.message.as_str()),
            (
                "bundle.too_large",
                "the archive unpacks to more than 16777216 bytes"
            )
        );
    }

    #[test]
    fn the_cap_allows_a_clean_end_exactly_at_it() {
        let read = |data: &'static [u8]| {
            let hit = std::rc::Rc::new(std::cell::Cell::new(false));
            let mut r = Capped {
                inner: data,
                left: 4,
                hit: hit.clone(),
            };
            let mut out = Vec::new();
            let res = r.read_to_end(&mut out).map_err(|e| e.to_string());
            (res, out, hit.get())
        };
        assert_eq!(read(b"abcd"), (Ok(4), b"abcd".to_vec(), false));
        assert_eq!(
            read(b"abcde"),
            (
                Err("archive larger than the unpack limit".into()),
                b"abcd".to_vec(),
                true
            )
        );
    }

    #[test]
    fn an_unreachable_url_is_a_fetch_finding_with_its_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("https://127.0.0.1:{port}/b.tgz?sig=secret");
        let f = refused(load(&url, Some(&"0".repeat(64))));
        assert_eq!(f.code, "bundle.fetch");
        assert!(
            f.message
                .starts_with(&format!("cannot fetch https://127.0.0.1:{port}/b.tgz?…: ")),
            "{}",
            f.message
        );
        assert!(f.message.contains("Connection refused"), "{}", f.message);
    }

    /// Set in the child process of the test below: the server's base URL.
    const CHILD_URL_ENV: &str = "ISTIO_VM_TEST_FETCH_URL";

    /// Answers by path: `/ok` a small archive, `/missing` 404, `/exact` a
    /// body of MAX_TOTAL bytes, `/huge` a length of MAX_TOTAL + 1 and no body,
    /// `/stall` nothing until the client gives up.
    fn serve_one(tcp: std::net::TcpStream, config: std::sync::Arc<rustls::ServerConfig>) {
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut req = Vec::new();
        let mut byte = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            match tls.read(&mut byte) {
                Ok(1) => req.push(byte[0]),
                _ => return,
            }
        }
        let req = String::from_utf8_lossy(&req);
        let path = req.split(' ').nth(1).unwrap_or("");
        if path == "/stall" {
            // Returns when the client closes the connection.
            let _ = tls.read(&mut byte);
            return;
        }
        let (status, length, body) = match path {
            "/ok" => ("200 OK", None, ok_body()),
            "/exact" => ("200 OK", None, vec![0; MAX_TOTAL as usize]),
            "/huge" => ("200 OK", Some(MAX_TOTAL + 1), Vec::new()),
            _ => ("404 Not Found", None, b"no".to_vec()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            length.unwrap_or(body.len() as u64)
        );
        let _ = tls.write_all(head.as_bytes());
        let _ = tls.write_all(&body);
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }

    fn ok_body() -> Vec<u8> {
        tgz(&[("cluster.env", b"A='1'\n")])
    }

    /// The checks of the child process, which trusts the server's CA.
    fn fetch_checks(base: &str) {
        let deadline = Duration::from_secs(60);
        let body = ok_body();
        assert_eq!(fetch(&format!("{base}/ok"), deadline).unwrap(), body);
        let b = load(&format!("{base}/ok"), Some(&sha(&body))).unwrap();
        assert_eq!(b.files["cluster.env"], b"A='1'\n");
        let f = refused(load(&format!("{base}/ok"), Some(&sha(b"other"))));
        assert_eq!(f.code, "bundle.checksum");
        let f = fetch(&format!("{base}/missing"), deadline).unwrap_err();
        assert_eq!(
            f[0].message,
            format!("{base}/missing answered HTTP 404 Not Found")
        );
        let exact = fetch(&format!("{base}/exact"), deadline).unwrap();
        assert_eq!(exact.len() as u64, MAX_TOTAL);
        let f = fetch(&format!("{base}/huge"), deadline).unwrap_err();
        assert_eq!(
            (f[0].code.as_str(), f[0].message.as_str()),
            (
                "bundle.too_large",
                format!("{base}/huge is larger than 16777216 bytes").as_str()
            )
        );
        // Connected and answered by TLS, then silent: the one deadline ends it.
        let f = fetch(&format!("{base}/stall"), Duration::from_millis(300)).unwrap_err();
        assert_eq!(f[0].code, "bundle.fetch");
        assert_eq!(
            f[0].message,
            format!("download of {base}/stall did not finish within 0.3s")
        );
    }

    #[test]
    fn fetch_trusts_ssl_cert_file_and_keeps_to_the_limits() {
        if let Ok(base) = std::env::var(CHILD_URL_ENV) {
            fetch_checks(&base);
            return;
        }
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for tcp in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let config = config.clone();
                    std::thread::spawn(move || serve_one(tcp.unwrap(), config));
                }
            })
        };
        // SSL_CERT_FILE is read from the environment: a child process gets
        // it rather than this one's threads sharing a changed environment.
        let name = "bundle::source::tests::fetch_trusts_ssl_cert_file_and_keeps_to_the_limits";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_URL_ENV, format!("https://{addr}"))
            .env(CA_FILE_ENV, &ca_file)
            .output()
            .unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(addr);
        server.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
    }
}
