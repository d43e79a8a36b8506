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
}
