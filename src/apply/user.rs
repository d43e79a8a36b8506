//! The istio-proxy user. Live, it is created if missing with the same
//! parameters as Istio's istio-sidecar postinst (tools/packaging/postinst.sh:
//! system group and system user of the same name, home /var/lib/istio, no
//! login), so that package and istio-vm can be installed in either order. An
//! existing user is never changed. Under `--root` the user is only declared
//! (sysusers.d, written by the plan) and looked up in the root's own files.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::Root;
use crate::layout::PROXY_USER;

/// uid and primary gid of istio-proxy, if it exists (the one rule of
/// `Sysroot::user`: NSS when live, the root's own files otherwise).
pub fn proxy_ids(root: &Root) -> Result<Option<(u32, u32)>> {
    Ok(root.user(PROXY_USER)?.map(|u| (u.uid, u.gid)))
}

/// What `create` did, so a rollback can undo exactly that.
#[derive(Debug, Default, Clone, Copy)]
pub struct Created {
    pub user: bool,
    pub group: bool,
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("running {shown} (is the passwd package installed?)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Create the system group and user (live only).
pub fn create() -> Result<Created> {
    let mut done = Created::default();
    if nix::unistd::Group::from_name(PROXY_USER)?.is_none() {
        run(Command::new("groupadd").args(["--system", PROXY_USER]))?;
        done.group = true;
    }
    let shell = if std::path::Path::new("/usr/sbin/nologin").exists() {
        "/usr/sbin/nologin"
    } else {
        "/sbin/nologin"
    };
    let r = run(Command::new("useradd").args([
        "--system",
        "--gid",
        PROXY_USER,
        "--home-dir",
        "/var/lib/istio",
        "--no-create-home",
        "--shell",
        shell,
        PROXY_USER,
    ]));
    if let Err(e) = r {
        if done.group {
            let _ = run(Command::new("groupdel").arg(PROXY_USER));
        }
        return Err(e);
    }
    done.user = true;
    Ok(done)
}

/// Undo `create` after a failed install.
pub fn undo(c: Created) -> Result<()> {
    if c.user {
        run(Command::new("userdel").arg(PROXY_USER))?;
    }
    if c.group && nix::unistd::Group::from_name(PROXY_USER)?.is_some() {
        run(Command::new("groupdel").arg(PROXY_USER))?;
    }
    Ok(())
}
