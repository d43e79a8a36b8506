//! Traffic capture: Istio's istio-iptables rule set for this VM, rendered
//! for iptables (`iptables-restore` input per family) or native nftables
//! (`nft -f` input with Istio's `inet istio-proxy-*` tables), and the live
//! apply / remove / status on the current network namespace.
//!
//! Pure part: [`config`] (cluster.env + resolv.conf + uid/gid -> what
//! istio-iptables would use, plus the VM-safety layer), [`model`] (the rules
//! in Istio's emission order), [`iptables`] and [`nft`] (renderers and
//! readers), [`sysfiles`] (reading the inputs under a root). Live part:
//! [`live`] (backend detection, one transaction per family, read-back,
//! rollback, removal by state, TPROXY policy routing).
//!
//! For install/uninstall: `commands::capture::apply_on_root` and
//! `remove_on_root` do everything `capture apply`/`remove` do; the pieces
//! are [`render`] + [`Rendered::record_files`] (files for
//! `/var/lib/istio-vm/capture/`), [`live::detect`], [`live::apply_live`],
//! [`live::remove_live`], [`live::write_record`].
//!
//! Exit codes (DESIGN.md): a refused render (SSH captured without
//! `allow_ssh_capture`, an invalid cluster.env value) is exit 1, like a
//! validation error — checked and not OK, nothing changed. So is a mixed
//! iptables-legacy/nft host, and an nft transaction the kernel rejects (nft
//! is atomic). iptables-restore commits table by table, so a rejected
//! iptables transaction may have committed earlier tables: those are put
//! back and the exit is 3, as for a read-back mismatch. `capture status` is
//! a check: exit 1 when the live rules are missing or differ.

pub mod compare;
pub mod config;
pub mod generate;
pub mod iptables;
pub mod kernel;
pub mod live;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod nftjson;
pub mod routing;
pub mod sysfiles;
pub mod watch;

pub use config::{CaptureError, Inputs, IstioConfig};
pub use model::{Backend, Family, RuleSet};

/// The rule text for one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    Iptables {
        v4: String,
        /// Present when IPv6 capture is on.
        v6: Option<String>,
    },
    Nftables {
        script: String,
    },
}

impl Rendered {
    /// Files recorded under `/var/lib/istio-vm/capture/` (name, content):
    /// `rules-v4` and `rules-v6` for iptables, `rules.nft` for nftables.
    pub fn record_files(&self) -> Vec<(&'static str, String)> {
        match self {
            Rendered::Iptables { v4, v6 } => {
                let mut f = vec![("rules-v4", v4.clone())];
                if let Some(v6) = v6 {
                    f.push(("rules-v6", v6.clone()));
                }
                f
            }
            Rendered::Nftables { script } => vec![("rules.nft", script.clone())],
        }
    }

    /// Everything as one text (for `capture render`).
    pub fn text(&self) -> String {
        match self {
            Rendered::Iptables { v4, v6 } => {
                let mut s = format!("# iptables-restore --noflush (IPv4)\n{v4}");
                if let Some(v6) = v6 {
                    s.push_str(&format!("# ip6tables-restore --noflush (IPv6)\n{v6}"));
                }
                s
            }
            Rendered::Nftables { script } => format!("# nft -f\n{script}"),
        }
    }
}

/// Render an already derived config for one backend.
pub fn render_config(cfg: &IstioConfig, backend: Backend) -> Rendered {
    let rs = model::generate(cfg, backend);
    match backend {
        Backend::Iptables => Rendered::Iptables {
            v4: iptables::render_restore(&rs, Family::V4).unwrap_or_default(),
            v6: iptables::render_restore(&rs, Family::V6),
        },
        Backend::Nftables => Rendered::Nftables {
            script: nft::render(&rs),
        },
    }
}

/// Pure entry point: cluster.env map, resolv.conf, uid/gid, IPv6 flag and
/// the istio-vm config fields -> the rules istio-vm applies (Istio's set
/// with the VM-safety layer).
pub fn render(inp: &Inputs<'_>, backend: Backend) -> Result<(IstioConfig, Rendered), CaptureError> {
    let cfg = IstioConfig::for_vm(inp)?;
    let r = render_config(&cfg, backend);
    Ok((cfg, r))
}

/// Record files for install: the rendered rules for this backend, to be
/// written to `layout::CAPTURE_DIR` (root, 0600).
pub fn record_files(
    inp: &Inputs<'_>,
    backend: Backend,
) -> Result<Vec<(&'static str, String)>, CaptureError> {
    Ok(render(inp, backend)?.1.record_files())
}

/// Failpoints for tests (`--features failpoints`, `ISTIO_VM_FAILPOINT`).
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(name: &str) -> bool {
    std::env::var("ISTIO_VM_FAILPOINT")
        .map(|v| v.split(',').any(|f| f == name))
        .unwrap_or(false)
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn failpoint(_name: &str) -> bool {
    false
}
