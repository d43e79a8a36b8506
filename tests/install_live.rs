//! A live install (`--root /`) with real useradd, run in private mount and
//! network namespaces: /etc, /var/lib, /var/log and /run are scratch copies,
//! so the host's user database, files and netfilter rules are never touched.
//! Needs root.

mod common;

use std::path::Path;
use std::process::Command;

fn live(work: &Path, script: &str) -> std::process::Output {
    let bin = assert_cmd::cargo::cargo_bin("istio-vm");
    // A private network namespace too: a live uninstall removes Istio's
    // netfilter rules, which must never be the host's.
    Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "sh", "-ec"])
        .arg(format!(
            "W=\"$1\"; BIN=\"$2\"; B=\"$3\"\n\
             mount --bind \"$W/etc\" /etc\n\
             mount --bind \"$W/varlib\" /var/lib\n\
             mount --bind \"$W/varlog\" /var/log\n\
             mount --bind \"$W/run\" /run\n\
             {script}"
        ))
        .arg("sh")
        .arg(work)
        .arg(bin)
        .arg(common::example_bundle())
        .env_remove("ISTIO_VM_ROOT")
        .env_remove("ISTIO_VM_CONFIG")
        .env_remove("ISTIO_VM_OUTPUT")
        .env_remove("ISTIO_VM_FAILPOINT")
        .output()
        .expect("unshare (util-linux)")
}

fn passwd_line(work: &Path) -> Option<String> {
    std::fs::read_to_string(work.join("etc/passwd"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("istio-proxy:"))
        .map(str::to_string)
}

#[test]
fn live_install_creates_the_user_and_uninstall_keeps_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (mount namespace, useradd); CI runs it as root"
    );
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let st = Command::new("cp")
        .args(["-a", "/etc"])
        .arg(w.join("etc"))
        .status()
        .unwrap();
    assert!(st.success());
    // A host that already has the user must not make this test vacuous.
    for f in ["passwd", "group", "shadow", "gshadow"] {
        let p = w.join("etc").join(f);
        if let Ok(s) = std::fs::read_to_string(&p) {
            let kept: String = s
                .lines()
                .filter(|l| !l.starts_with("istio-proxy:"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&p, kept).unwrap();
        }
    }
    for d in ["varlib", "varlog", "run/lock"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    let hosts_before = std::fs::read(w.join("etc/hosts")).unwrap();
    let out = live(
        w,
        "\"$BIN\" --output json install --bundle \"$B\" > \"$W/first.json\"\n\
         \"$BIN\" --output json install --bundle \"$B\" > \"$W/second.json\"\n\
         getent passwd istio-proxy > \"$W/getent\"\n\
         \"$BIN\" --output json uninstall > \"$W/uninstall.json\"",
    );
    assert!(
        out.status.success(),
        "stderr: {}\nfirst: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(w.join("first.json")).unwrap_or_default()
    );
    let read_json = |n: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(w.join(n)).unwrap()).unwrap()
    };
    let first = read_json("first.json");
    let user_step = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "user:istio-proxy")
        .unwrap()
        .clone();
    assert_eq!(user_step["status"], "changed", "{first:#}");
    assert_eq!(read_json("second.json")["changed"], false);
    // Istio's postinst parameters: system user, own group, home, no login.
    let line = passwd_line(w).expect("istio-proxy created");
    let f: Vec<&str> = line.split(':').collect();
    let uid: u32 = f[2].parse().unwrap();
    assert!(uid < 1000, "{line}");
    assert_eq!(f[5], "/var/lib/istio");
    assert!(f[6].ends_with("/nologin"), "{line}");
    let group = std::fs::read_to_string(w.join("etc/group")).unwrap();
    let gline = group
        .lines()
        .find(|l| l.starts_with("istio-proxy:"))
        .unwrap();
    assert_eq!(
        gline.split(':').nth(2).unwrap(),
        f[3],
        "primary group istio-proxy"
    );
    assert!(
        std::fs::read_to_string(w.join("getent"))
            .unwrap()
            .starts_with("istio-proxy:")
    );
    // Live: no sysusers.d file, and files were owned by istio-proxy while
    // installed (the second run saw nothing to fix).
    assert!(
        !w.join("etc/certs").exists(),
        "uninstall removed what install created"
    );
    assert_eq!(std::fs::read(w.join("etc/hosts")).unwrap(), hosts_before);
    assert!(!w.join("varlib/istio-vm").exists());
    // The user stays: it may be Istio's.
    assert_eq!(passwd_line(w).as_deref(), Some(line.as_str()));
    let un = read_json("uninstall.json");
    assert_eq!(un["changed"], true);
}

#[test]
fn live_install_keeps_an_existing_user_unchanged() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root; CI runs it as root"
    );
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    assert!(
        Command::new("cp")
            .args(["-a", "/etc"])
            .arg(w.join("etc"))
            .status()
            .unwrap()
            .success()
    );
    for d in ["varlib", "varlog", "run/lock"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    let out = live(
        w,
        "getent passwd istio-proxy >/dev/null || useradd --system --user-group --home-dir /opt/elsewhere --shell /bin/sh istio-proxy\n\
         getent passwd istio-proxy > \"$W/before\"\n\
         \"$BIN\" --output json install --bundle \"$B\" > \"$W/install.json\"\n\
         getent passwd istio-proxy > \"$W/after\"\n\
         stat -c %U /etc/certs/root-cert.pem > \"$W/owner\"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read_to_string(w.join("before")).unwrap();
    assert_eq!(std::fs::read_to_string(w.join("after")).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(w.join("owner")).unwrap().trim(),
        "istio-proxy"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.join("install.json")).unwrap()).unwrap();
    let user_step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "user:istio-proxy")
        .unwrap()
        .clone();
    assert_eq!(user_step["status"], "ok");
}
