//! The kernel's netfilter as the tools show it: which iptables flavour
//! (nft or legacy) and backend, running the tools, and one [`Snapshot`] of
//! every backend read with the tools running side by side. Native nft
//! tables are read as `nft -j` JSON ([`super::nftjson`]), never as text.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use super::iptables::Tables;
use super::model::Family;
use super::nft;
use super::nftjson::{self, NftTables};

/// Which iptables binaries: the nf_tables or the legacy x_tables flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Nft,
    Legacy,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Nft => "iptables-nft",
            Variant::Legacy => "iptables-legacy",
        }
    }
    pub(super) fn bin(self, f: Family, tool: &str) -> String {
        let base = match f {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let v = match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        };
        let join = |parts: &[&str]| {
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("-")
        };
        let named = join(&[base, v, tool]);
        // iptables before 1.8 (RHEL/CentOS 7) has only the plain names, and
        // they are legacy x_tables.
        if self == Variant::Legacy && !on_path(&named) && plain_is_legacy() {
            return join(&[base, tool]);
        }
        named
    }
}

/// The unsuffixed `iptables` is the legacy flavour (iptables < 1.8 has no
/// `-legacy`/`-nft` names; 1.8+ says `(nf_tables)` or `(legacy)`).
fn plain_is_legacy() -> bool {
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLAIN.get_or_init(|| {
        on_path("iptables-restore")
            && !on_path("iptables-legacy-restore")
            && run("iptables", &["--version"], None).is_ok_and(|v| !v.contains("nf_tables"))
    })
}

/// The backend that will hold the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Iptables(Variant),
    Nftables,
}

impl Resolved {
    pub fn name(self) -> &'static str {
        match self {
            Resolved::Iptables(v) => v.name(),
            Resolved::Nftables => "nftables",
        }
    }
    pub fn model(self) -> super::Backend {
        match self {
            Resolved::Iptables(_) => super::Backend::Iptables,
            Resolved::Nftables => super::Backend::Nftables,
        }
    }
}

/// Full path of `bin` from PATH, or the sbin directories (a non-root
/// shell's PATH often lacks them; the tools live there).
///
/// Remembered per PATH and name: one apply asks for the same few tools a
/// dozen times, and each miss is a path lookup in every PATH directory
/// (together a tenth of istio-vm's own CPU time in an apply). A long
/// `capture watch` keeps what it found until it is restarted (it is, with
/// istio.service); installing iptables or nft later is seen then.
pub(super) fn which(bin: &str) -> Option<std::path::PathBuf> {
    type Key = (std::ffi::OsString, String);
    static FOUND: std::sync::Mutex<Vec<(Key, Option<std::path::PathBuf>)>> =
        std::sync::Mutex::new(Vec::new());
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let key = (path, bin.to_string());
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, hit)) = found.iter().find(|(k, _)| *k == key) {
        return hit.clone();
    }
    let hit = std::env::split_paths(&key.0)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file());
    found.push((key, hit.clone()));
    hit
}

pub(super) fn on_path(bin: &str) -> bool {
    which(bin).is_some()
}

/// The files of the legacy iptables binaries (`xtables-legacy-multi` on
/// Debian, `xtables-multi` before iptables 1.8), symlinks resolved:
/// what `capture watch` watches for legacy x_tables changes.
fn legacy_binaries() -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = [Family::V4, Family::V6]
        .into_iter()
        .flat_map(|f| ["", "save", "restore"].map(|t| Variant::Legacy.bin(f, t)))
        .filter_map(|b| which(&b))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

static LEGACY_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static LEGACY_FILES: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Count this process's own runs of a legacy binary: `capture watch` sees
/// every run end (inotify) and must tell its own from another tool's.
fn count_legacy(exe: &std::path::Path) {
    // Only the watcher, which set the list up, counts.
    let Some(files) = LEGACY_FILES.get() else {
        return;
    };
    if std::fs::canonicalize(exe).is_ok_and(|p| files.contains(&p)) {
        LEGACY_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The legacy binaries to watch (found once), and from now on count runs
/// of them.
pub(super) fn watched_legacy_binaries() -> &'static [std::path::PathBuf] {
    LEGACY_FILES.get_or_init(legacy_binaries)
}

/// How many legacy binaries this process has run so far.
pub(super) fn legacy_runs() -> usize {
    LEGACY_RUNS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Run a program, feeding `stdin`; its stdout, or an error with its stderr.
pub(super) fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let exe = if prog.contains('/') {
        prog.into()
    } else {
        which(prog).unwrap_or_else(|| prog.into())
    };
    count_legacy(&exe);
    let child = Command::new(exe)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {prog}"))?;
    feed(child, prog, args, stdin)
}

/// Write `stdin` to a started child and wait for it: its stdout, or an
/// error with its stderr.
fn feed(
    mut child: std::process::Child,
    prog: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing to {prog}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child started now and read later, so independent reads of the kernel
/// run side by side (each tool start costs about a millisecond; apply runs
/// five of them before it changes anything).
pub(super) fn start(prog: &str, args: &[&str]) -> Option<std::process::Child> {
    let exe = which(prog)?;
    count_legacy(&exe);
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

pub(super) fn finish(child: Option<std::process::Child>) -> Option<String> {
    let out = child?.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-*-save` of one family; None when that family is unusable here
/// (binary missing, or no IPv6 in the kernel).
pub(super) fn save(v: Variant, f: Family) -> Option<String> {
    finish(start(&v.bin(f, "save"), &[]))
}

fn restore_args(noflush: bool) -> Vec<&'static str> {
    let mut args = vec!["-w"];
    if noflush {
        args.push("--noflush");
    }
    args
}

pub(super) fn restore(v: Variant, f: Family, input: &str, noflush: bool) -> Result<()> {
    let bin = v.bin(f, "restore");
    let args = restore_args(noflush);
    if let Some(child) = take_prestarted(&bin, &args) {
        return feed(child, &bin, &args, Some(input)).map(|_| ());
    }
    run(&bin, &args, Some(input)).map(|_| ())
}

/// A `*-restore` started before its input is known, so that its start
/// (exec, loading its libraries, about a millisecond of CPU) runs on the
/// other core while istio-vm reads the kernel and renders. Until its
/// input is written it has changed nothing, and it never will if it is
/// killed instead: until it has read a table from its input,
/// `iptables-nft-restore` (iptables 1.8) has only opened its netlink
/// socket and sent nothing (seen with strace, iptables 1.8.9 on Debian 12). Only the
/// nf_tables variant is started early: it takes no xtables lock, so one
/// waiting for input blocks no other tool.
struct Prestarted {
    bin: String,
    args: Vec<&'static str>,
    child: std::process::Child,
}

static PRESTARTED: std::sync::Mutex<Option<Prestarted>> = std::sync::Mutex::new(None);

/// Start `iptables-nft-restore` (IPv4, `--noflush`) ahead of an apply or
/// a remove; the guard kills it, unused, when dropped.
pub fn prestart_restore() -> PrestartGuard {
    let bin = Variant::Nft.bin(Family::V4, "restore");
    let args = restore_args(true);
    let child = which(&bin).and_then(|exe| {
        Command::new(exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()
    });
    if let Some(child) = child {
        let old = PRESTARTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(Prestarted { bin, args, child });
        discard(old);
    }
    PrestartGuard(())
}

/// Kills the prestarted restore if nothing used it.
pub struct PrestartGuard(());

impl Drop for PrestartGuard {
    fn drop(&mut self) {
        discard(PRESTARTED.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

fn discard(p: Option<Prestarted>) {
    if let Some(mut p) = p {
        // Killed before any input: nothing was read, nothing committed.
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

fn take_prestarted(bin: &str, args: &[&str]) -> Option<std::process::Child> {
    let mut slot = PRESTARTED.lock().unwrap_or_else(|e| e.into_inner());
    match slot.take() {
        Some(p) if p.bin == bin && p.args == args => Some(p.child),
        other => {
            *slot = other;
            None
        }
    }
}

/// Every nf_tables table (family, name): asked of the kernel over netlink,
/// or of `nft -j list tables` where that fails.
fn nft_table_names(nl: Option<&mut super::netlink::Dumper>, nft: bool) -> Vec<(String, String)> {
    let listed = match nl {
        Some(nl) => nl.tables(),
        None => Err(anyhow!("no netlink socket")),
    };
    match listed {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!("{e:#}; asking nft instead");
            let Some(json) = nft
                .then(|| finish(start("nft", &["-j", "list", "tables"])))
                .flatten()
            else {
                return Vec::new();
            };
            serde_json::from_str::<nftjson::Listing>(&json)
                .map(|l| {
                    l.nftables
                        .iter()
                        .filter_map(|o| {
                            let t = o.get("table")?;
                            Some((
                                t.get("family")?.as_str()?.to_string(),
                                t.get("name")?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
    }
}

/// Istio's nft tables as the kernel holds them (`nft -j list ruleset inet`,
/// one `nft` run for all three), in the normal form, with the listing
/// objects that put them back.
#[derive(Debug, Default, Clone)]
pub struct NftState {
    pub tables: NftTables,
    pub objects: Vec<serde_json::Value>,
}

impl NftState {
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tables.keys()
    }
}

fn read_nft(json: Option<String>) -> Result<NftState> {
    let json = json.context("`nft -j list ruleset inet` failed")?;
    let listing: nftjson::Listing =
        serde_json::from_str(&json).context("reading `nft -j list ruleset inet`")?;
    Ok(NftState {
        tables: nftjson::from_json(&listing, &nft::TABLES),
        objects: nftjson::objects_of(&listing, &nft::TABLES),
    })
}

/// Read Istio's nft tables now (after an apply).
pub(super) fn nft_state() -> Result<NftState> {
    read_nft(finish(start("nft", &["-j", "list", "ruleset", "inet"])))
}

/// One iptables variant whose binaries exist, with its `*-save` output per
/// family (None: that family is unusable here).
pub struct Probe {
    pub variant: Variant,
    saves: [Option<String>; 2],
}

impl Probe {
    pub(super) fn save(&self, f: Family) -> Option<&str> {
        self.saves[f as usize].as_deref()
    }

    /// Holds any rule or user chain (Istio's choice of variant and the
    /// mixed-setup check both look at this).
    pub fn holds_rules(&self) -> bool {
        self.saves
            .iter()
            .flatten()
            .any(|s| Tables::parse(s).is_ok_and(|t| t.has_content()))
    }
}

/// One `*-save` on its way, or not run because the family holds nothing:
/// legacy x_tables list their tables in `/proc/net/ip{,6}_tables_names`
/// (per network namespace); iptables-nft's tables are nf_tables tables of
/// family `ip`/`ip6`, and the netlink dumps say whether they hold a rule or
/// a user chain ([`super::netlink::Dumper::families_with_content`]). Where they do
/// not, the save would print the empty tables, and that text is made here:
/// one process less per empty family on every apply, remove and check (on
/// a fresh VM, and after `remove`, every family is empty).
enum Pending {
    Running(Option<std::process::Child>),
    Known(String),
}

/// What the netlink dumps say (None: they failed, run every save).
struct NftView<'a> {
    tables: &'a [(String, String)],
    content: Option<Vec<String>>,
}

impl Pending {
    fn start(v: Variant, f: Family, view: &NftView<'_>) -> Pending {
        let save = v.bin(f, "save");
        let known = match v {
            Variant::Legacy => {
                let names = match f {
                    Family::V4 => "/proc/net/ip_tables_names",
                    Family::V6 => "/proc/net/ip6_tables_names",
                };
                std::fs::read_to_string(names)
                    .map_or(true, |t| t.trim().is_empty())
                    .then(String::new)
            }
            Variant::Nft => {
                let fam = match f {
                    Family::V4 => "ip",
                    Family::V6 => "ip6",
                };
                // Where IPv6 is off, the save is what says so (None).
                let usable = f == Family::V4 || std::path::Path::new("/proc/net/if_inet6").exists();
                let empty = view
                    .content
                    .as_ref()
                    .is_some_and(|c| !c.iter().any(|x| x == fam));
                (usable && empty).then(|| {
                    view.tables
                        .iter()
                        .filter(|(tf, _)| tf == fam)
                        .map(|(_, t)| format!("*{t}\nCOMMIT\n"))
                        .collect()
                })
            }
        };
        match known {
            Some(text) if on_path(&save) => Pending::Known(text),
            _ => Pending::Running(start(&save, &[])),
        }
    }

    fn finish(self) -> Option<String> {
        match self {
            Pending::Running(c) => finish(c),
            Pending::Known(text) => Some(text),
        }
    }
}

/// The kernel's netfilter state as the tools print it, read once: every
/// iptables variant and family, and Istio's nft tables.
pub struct Snapshot {
    pub probes: Vec<Probe>,
    /// `nft` is installed.
    pub nft: bool,
    /// Istio's nft tables present.
    pub nft_tables: NftState,
    /// Reading them failed (the `nft` run or its JSON).
    pub nft_error: Option<String>,
}

impl Snapshot {
    /// Read everything, the tools running side by side.
    pub fn take() -> Snapshot {
        let nft = on_path("nft");
        let mut nl = super::netlink::Dumper::open()
            .map_err(|e| tracing::debug!("{e:#}"))
            .ok();
        let names = nft_table_names(nl.as_mut(), nft);
        let content = nl.as_mut().and_then(|nl| {
            nl.families_with_content()
                .map_err(|e| tracing::debug!("{e:#}"))
                .ok()
        });
        drop(nl);
        let view = NftView {
            tables: &names,
            content,
        };
        let variants: Vec<Variant> = [Variant::Nft, Variant::Legacy]
            .into_iter()
            .filter(|v| on_path(&v.bin(Family::V4, "restore")))
            .collect();
        let children: Vec<_> = variants
            .iter()
            .map(|v| [Family::V4, Family::V6].map(|f| Pending::start(*v, f, &view)))
            .collect();
        let istio_nft = names
            .iter()
            .any(|(f, n)| f == "inet" && nft::TABLES.contains(&n.as_str()));
        let listing = (nft && istio_nft).then(|| start("nft", &["-j", "list", "ruleset", "inet"]));
        let probes = variants
            .into_iter()
            .zip(children)
            .map(|(variant, [a, b])| Probe {
                variant,
                saves: [a.finish(), b.finish()],
            })
            .collect();
        let (nft_tables, nft_error) = match listing {
            Some(c) => match read_nft(finish(c)) {
                Ok(s) => (s, None),
                // The names are known (removal still finds the tables);
                // their content is not.
                Err(e) => (
                    NftState {
                        tables: names
                            .iter()
                            .filter(|(f, n)| f == "inet" && nft::TABLES.contains(&n.as_str()))
                            .map(|(_, n)| (n.clone(), Default::default()))
                            .collect(),
                        objects: Vec::new(),
                    },
                    Some(format!("{e:#}")),
                ),
            },
            None => (NftState::default(), None),
        };
        Snapshot {
            probes,
            nft,
            nft_tables,
            nft_error,
        }
    }

    pub(super) fn probe(&self, v: Variant) -> Option<&Probe> {
        self.probes.iter().find(|p| p.variant == v)
    }

    /// The parsed `*-save` of one variant and family.
    pub fn tables(&self, v: Variant, f: Family) -> Option<Result<Tables>> {
        let text = self.probe(v)?.save(f)?;
        Some(Tables::parse(text).map_err(|e| anyhow!("reading {}: {e}", v.bin(f, "save"))))
    }
}

/// Pick the backend. `requested`: the CLI/config choice; `native_nft`:
/// cluster.env asks for Istio's nftables mode (NATIVE_NFTABLES).
pub fn detect(
    requested: crate::cli::Backend,
    native_nft: bool,
    snap: &Snapshot,
) -> Result<Resolved> {
    use crate::cli::Backend as B;
    let want_nft = match requested {
        B::Nftables => true,
        B::Iptables => false,
        B::Auto => native_nft,
    };
    if want_nft {
        if !snap.nft {
            bail!("the nftables backend needs the `nft` binary: install the nftables package");
        }
        return Ok(Resolved::Nftables);
    }
    let variants: Vec<(Variant, bool)> = snap
        .probes
        .iter()
        .map(|p| (p.variant, p.holds_rules()))
        .collect();
    if variants.is_empty() {
        if requested == B::Auto && snap.nft {
            return Ok(Resolved::Nftables);
        }
        bail!(
            "no iptables-nft or iptables-legacy binaries found: install the iptables package \
             (or use --backend nftables)"
        );
    }
    let holding: Vec<Variant> = variants
        .iter()
        .filter(|(_, h)| *h)
        .map(|(v, _)| *v)
        .collect();
    if holding.len() > 1 {
        bail!(
            "both iptables-nft and iptables-legacy hold rules on this host (see `iptables-nft-save` \
             and `iptables-legacy-save`): capture rules in one would be bypassed or doubled by the \
             other. Move every rule to one of them (or flush the unused one), then retry"
        );
    }
    // Istio's choice (dependencies/implementation.go): legacy if it holds
    // rules, else nft.
    let v = holding
        .first()
        .copied()
        .or_else(|| {
            variants
                .iter()
                .map(|(v, _)| *v)
                .find(|v| *v == Variant::Nft)
        })
        .unwrap_or(Variant::Legacy);
    Ok(Resolved::Iptables(v))
}

/// Strip volatile parts of an `iptables-save` dump (comments, counters) so
/// two dumps of the same rules compare equal.
pub fn normalize_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                match l.rfind(" [") {
                    Some(i) => l[..i].to_string(),
                    None => l.to_string(),
                }
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
