//! Is this process in a chroot? Image builders run `dpkg -r` / `rpm -e`
//! (and so our prerm) inside a chroot that shares the host's network
//! namespace and has no running systemd: there, `/` is the image, not the
//! machine, and istio-vm must behave as under `--root` (never iptables,
//! nft or systemctl against the host).
//!
//! Detected as debianutils' `ischroot` and `systemd-detect-virt --chroot`
//! do: `/` is compared with `/proc/1/root` (device and inode). Where PID 1's
//! root cannot be read (no `/proc` mounted: a chroot), "cannot tell" counts
//! as a chroot. One refinement: where `/proc` is there but PID 1 is out of
//! reach (EACCES: PID 1 belongs to an outer user namespace, as in some
//! sandboxes and containers), our own ancestors decide — the process that
//! called chroot(2) (a builder's shell, `chroot` itself sits below it) has
//! the outer root, so any readable ancestor with another root means a
//! chroot; ancestors that all share our root mean none.

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

/// The answer for this process, computed once.
pub fn in_chroot() -> bool {
    static IN: OnceLock<bool> = OnceLock::new();
    *IN.get_or_init(|| {
        let proc = std::path::Path::new("/proc");
        // A hardened unit (ProtectProc=invisible, no CAP_SYS_PTRACE) cannot
        // see pid 1's root, so it cannot tell by looking; but systemd
        // started it (it sets INVOCATION_ID for every unit), and systemd
        // runs units on the machine it manages, never inside an image
        // builder's chroot, where no systemd runs.
        if std::env::var_os("INVOCATION_ID").is_some() && id(&proc.join("1/root")).is_err() {
            return false;
        }
        detect(proc)
    })
}

fn id(p: &std::path::Path) -> std::io::Result<(u64, u64)> {
    std::fs::metadata(p).map(|m| (m.dev(), m.ino()))
}

fn parent_of(proc: &std::path::Path, pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The decision, with `/proc` at `proc` (tests pass another directory).
pub fn detect(proc: &std::path::Path) -> bool {
    let Ok(me) = id(std::path::Path::new("/")) else {
        return true;
    };
    match id(&proc.join("1/root")) {
        Ok(one) => return one != me,
        Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => return true,
        Err(_) => {}
    }
    let mut pid = std::process::id();
    let mut seen_outer = false;
    for _ in 0..64 {
        let Some(ppid) = parent_of(proc, pid) else {
            break;
        };
        if ppid <= 1 {
            break;
        }
        if let Ok(root) = id(&proc.join(ppid.to_string()).join("root")) {
            if root != me {
                return true;
            }
            seen_outer = true;
        }
        pid = ppid;
    }
    // No ancestor readable: cannot tell.
    !seen_outer
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_proc_means_chroot() {
        let d = tempfile::tempdir().unwrap();
        assert!(super::detect(d.path()));
    }

    #[test]
    fn this_test_is_not_in_a_chroot() {
        // The test runner is started by a shell that shares its root.
        assert!(!super::detect(std::path::Path::new("/proc")));
    }
}
