//! scripts/build-repo.sh on its own (no boot): shellcheck, the layout, one
//! package per architecture's index, incremental rebuilds that keep the
//! pool, refusal of a changed file under a published name, and the choice
//! of signing key. Small packages made here with dpkg-deb and rpmbuild.

#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/repo.rs"]
mod repo;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use repo::SigningKey;

fn deb(dir: &Path, name: &str, version: &str, arch: &str) -> PathBuf {
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    std::fs::create_dir_all(t.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(t.join("usr/share/doc").join(name)).unwrap();
    std::fs::write(t.join("usr/share/doc").join(name).join("note"), version).unwrap();
    std::fs::write(
        t.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: t <t@example.invalid>\nDescription: test package\n test\n"
        ),
    )
    .unwrap();
    // The file name says nothing: build-repo.sh names pool files itself.
    let out = dir.join(format!("{name}-{version}-{arch}-whatever.deb"));
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(t)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn rpm(dir: &Path, name: &str, version: &str) -> PathBuf {
    let top = tempfile::tempdir().unwrap();
    let spec = top.path().join("t.spec");
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: t\nLicense: MIT\n\
             BuildArch: noarch\n%description\nt\n%files\n"
        ),
    )
    .unwrap();
    let o = Command::new("rpmbuild")
        .args(["-bb", "--quiet", "--define"])
        .arg(format!("_topdir {}", top.path().display()))
        .arg(&spec)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let name = format!("{name}-{version}-1.noarch.rpm");
    let out = dir.join(&name);
    std::fs::copy(top.path().join("RPMS/noarch").join(&name), &out).unwrap();
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn build_repo_passes_shellcheck() {
    let o = Command::new("shellcheck")
        .arg(e2e::repo().join("scripts/build-repo.sh"))
        .output()
        .expect("shellcheck (scripts/install-test-deps.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn layout_indices_incremental_rebuild_and_refusals() {
    let w = tempfile::tempdir().unwrap();
    let dist = w.path().join("dist");
    let out = w.path().join("out");
    std::fs::create_dir_all(&dist).unwrap();
    deb(&dist, "istio-vm", "1.0-1", "amd64");
    deb(&dist, "istio-vm", "1.0-1", "arm64");
    deb(&dist, "istio-vm-doc", "1.0-1", "all");
    rpm(&dist, "istio-vm", "1.0");
    let key = SigningKey::new("archive");
    key.build_repo(&dist, &out);

    for f in [
        "istio-vm-archive-keyring.gpg",
        "istio-vm-archive-keyring.asc",
        "apt/dists/stable/Release",
        "apt/dists/stable/InRelease",
        "apt/dists/stable/Release.gpg",
        "apt/pool/main/i/istio-vm/istio-vm_1.0-1_amd64.deb",
        "apt/pool/main/i/istio-vm/istio-vm_1.0-1_arm64.deb",
        "apt/pool/main/i/istio-vm-doc/istio-vm-doc_1.0-1_all.deb",
        "rpm/packages/istio-vm-1.0-1.noarch.rpm",
        "rpm/repodata/repomd.xml",
        "rpm/repodata/repomd.xml.asc",
    ] {
        assert!(out.join(f).is_file(), "no {f}");
    }
    for arch in ["amd64", "arm64"] {
        let dir = out.join(format!("apt/dists/stable/main/binary-{arch}"));
        let p = read(&dir.join("Packages"));
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        assert!(p.contains(&format!("Architecture: {arch}\n")), "{p}");
        assert!(p.contains("Package: istio-vm-doc\n"), "{p}");
        assert!(!p.contains(&format!("Architecture: {other}\n")), "{p}");
        for z in ["Packages.gz", "Packages.xz"] {
            assert!(dir.join(z).is_file());
        }
    }
    // Release lists every index and not itself; signed by the key.
    let release = read(&out.join("apt/dists/stable/Release"));
    assert!(
        release.contains("main/binary-arm64/Packages.xz"),
        "{release}"
    );
    assert!(!release.contains(" Release\n"), "{release}");
    assert!(release.contains("Suite: stable\n"), "{release}");
    let o = Command::new("gpgv")
        .arg("--keyring")
        .arg(out.join("istio-vm-archive-keyring.gpg"))
        .arg(out.join("apt/dists/stable/InRelease"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // One package more: only it is added; the published files stay.
    let kept: Vec<(PathBuf, u64, i64)> = repo::files_under(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/pool/") || p.starts_with("rpm/packages"))
        .map(|p| {
            let m = std::fs::metadata(out.join(&p)).unwrap();
            (p, m.ino(), m.mtime_nsec())
        })
        .collect();
    assert_eq!(kept.len(), 4, "{kept:?}");
    deb(&dist, "istio-vm", "1.0-2", "amd64");
    rpm(&dist, "istio-vm", "1.1");
    let log = key.build_repo(&dist, &out);
    assert_eq!(log.matches("build-repo: added").count(), 2, "{log}");
    for (p, ino, mtime) in &kept {
        let m = std::fs::metadata(out.join(p)).unwrap();
        assert_eq!(
            (m.ino(), m.mtime_nsec()),
            (*ino, *mtime),
            "{} rewritten",
            p.display()
        );
    }
    let p = read(&out.join("apt/dists/stable/main/binary-amd64/Packages"));
    assert!(
        p.contains("Version: 1.0-1\n") && p.contains("Version: 1.0-2\n"),
        "{p}"
    );
    let primary = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat {}/rpm/repodata/*-primary.xml.gz",
            out.display()
        ))
        .output()
        .unwrap();
    let primary = String::from_utf8_lossy(&primary.stdout);
    assert!(
        primary.contains("ver=\"1.0\"") && primary.contains("ver=\"1.1\""),
        "{primary}"
    );

    // A different package under a published name is refused, and nothing
    // published changes.
    let published = || -> Vec<(PathBuf, Vec<u8>)> {
        repo::files_under(&out.join("apt"))
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(out.join("apt").join(&p)).unwrap();
                (p, bytes)
            })
            .collect()
    };
    let before = published();
    let rebuilt = tempfile::tempdir().unwrap();
    let changed = deb(rebuilt.path(), "istio-vm-doc", "1.0-1", "all");
    let other_dist = w.path().join("dist2");
    std::fs::create_dir_all(&other_dist).unwrap();
    {
        // Same name and version, other contents: a different build.
        let t = tempfile::tempdir().unwrap();
        let o = Command::new("dpkg-deb")
            .args(["-R"])
            .arg(&changed)
            .arg(t.path())
            .output()
            .unwrap();
        assert!(o.status.success());
        std::fs::write(
            t.path().join("usr/share/doc/istio-vm-doc/note"),
            "other build",
        )
        .unwrap();
        let o = Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(t.path())
            .arg(other_dist.join("doc.deb"))
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let o = key.try_build_repo(&other_dist, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is published already with other contents"),
        "{err}"
    );
    assert!(
        before == published(),
        "a refused rebuild changed the repository"
    );
}

#[test]
fn the_signing_key_is_the_named_one_or_the_first() {
    let w = tempfile::tempdir().unwrap();
    let dist = w.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    deb(&dist, "istio-vm", "1.0-1", "amd64");
    let key = SigningKey::new("first");
    // A second key in the same home.
    key.gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "second <second@example.invalid>",
        "rsa3072",
        "sign",
        "1d",
    ]);
    let signer = |out: &Path| {
        let o = Command::new("gpg")
            .args(["--batch", "--status-fd", "1", "--verify"])
            .arg(out.join("apt/dists/stable/Release.gpg"))
            .arg(out.join("apt/dists/stable/Release"))
            .env("GNUPGHOME", key.home.path())
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.lines()
            .find_map(|l| l.strip_prefix("[GNUPG:] GOODSIG "))
            .map(|l| l.split(' ').skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no good signature: {s}"))
    };
    let out = w.path().join("a");
    key.build_repo(&dist, &out);
    assert_eq!(signer(&out), "first <first@example.invalid>");
    let out = w.path().join("b");
    let o = Command::new(e2e::repo().join("scripts/build-repo.sh"))
        .arg(&dist)
        .arg(&out)
        .env("GNUPGHOME", key.home.path())
        .env("ISTIO_VM_SIGNING_KEY", "second@example.invalid")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(signer(&out), "second <second@example.invalid>");

    // No such key: a clear error, nothing built.
    let out = w.path().join("c");
    let o = Command::new(e2e::repo().join("scripts/build-repo.sh"))
        .arg(&dist)
        .arg(&out)
        .env("GNUPGHOME", key.home.path())
        .env("ISTIO_VM_SIGNING_KEY", "nobody@example.invalid")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no secret key named"), "{err}");
    assert!(!out.join("apt").exists());
}
