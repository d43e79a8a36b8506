//! Builds the .deb and .rpm packages once per test binary, for the
//! packaging tests (tests/packaging_*.rs). Use it as
//! `#[path = "common/pkg.rs"] mod pkg;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target directory this test binary was built into
/// (`<target>/debug/deps/<test>`), so the package builds share it.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test binary");
    exe.ancestors()
        .nth(3)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("utf-8 output")
}

/// A build command run as from a shell: cargo gives this test process
/// CARGO_MANIFEST_DIR and friends, and build scripts that track them (ring's)
/// would otherwise rebuild everything each time.
pub fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        // OUT_DIR: cargo sets it for this test binary (the crate has a
        // build script); inherited, it made the release build differ from
        // one run from a shell and compile everything again.
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || matches!(
                &*key,
                "LD_LIBRARY_PATH" | "OUT_DIR" | "RUST_RECURSION_COUNT"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", target_dir())
        .current_dir(repo());
    cmd
}

/// The stand-in agent (examples/stand-in-agent) built for glibc 2.17 like
/// the packaged binary (scripts/build-binary.sh), so that the stand-in
/// sidecar runs on every Debian release the booted tests use. In the dev
/// profile, not release: an example brings the dev-dependencies' features
/// (tokio's rt-multi-thread), so a release build would recompile every
/// crate that uses tokio with LTO a second time; unoptimised, the whole
/// build is a few minutes.
pub fn portable_stand_in_agent() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        // build-binary.sh installs the pinned tools (and cargo would run
        // the two builds one after the other anyway: one target dir lock).
        amd64();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // No debug info: smaller and quicker to build and to package.
        run(clean_command(Path::new(&cargo))
            .env("CARGO_PROFILE_DEV_DEBUG", "false")
            .args([
                "zigbuild",
                "--locked",
                "--example",
                "stand-in-agent",
                "--target",
                "x86_64-unknown-linux-gnu.2.17",
            ]));
        target_dir().join("x86_64-unknown-linux-gnu/debug/examples/stand-in-agent")
    })
}

pub struct Packages {
    pub deb_amd64: PathBuf,
    pub deb_arm64: PathBuf,
    /// amd64 again with Debian revision 2: the upgrade.
    pub deb_amd64_rev2: PathBuf,
    pub rpm_x86_64: PathBuf,
    pub rpm_aarch64: PathBuf,
}

/// The amd64 .deb and its revision 2 only (the booted tests need no more).
pub struct Amd64 {
    pub deb: PathBuf,
    pub deb_rev2: PathBuf,
}

pub fn amd64() -> &'static Amd64 {
    static BUILT: OnceLock<Amd64> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let out = target_dir()
            .join("packaging-test")
            .join(format!("{name}-amd64"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(out.join("rev2")).unwrap();
        let build = |dir: &Path, extra: &[(&str, &str)]| {
            let mut cmd = clean_command(&repo().join("scripts/build-deb.sh"));
            cmd.arg("amd64").env("DIST_DIR", dir);
            for (k, v) in extra {
                cmd.env(k, v);
            }
            let listed: Vec<PathBuf> = stdout(&mut cmd).lines().map(PathBuf::from).collect();
            assert_eq!(listed.len(), 1, "build-deb.sh printed {listed:?}");
            listed[0].clone()
        };
        let deb = build(&out, &[]);
        let deb_rev2 = build(
            &out.join("rev2"),
            &[("NO_BUILD", "1"), ("DEB_REVISION", "2")],
        );
        Amd64 { deb, deb_rev2 }
    })
}

pub fn packages() -> &'static Packages {
    static BUILT: OnceLock<Packages> = OnceLock::new();
    BUILT.get_or_init(|| {
        // One directory per test binary: they may run one after the other
        // in the same cargo invocation, each wiping its own.
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let out = target_dir().join("packaging-test").join(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(out.join("rev2")).unwrap();
        let script = |name: &str, out_dir: &Path, args: &[&str], extra: &[(&str, &str)]| {
            let mut cmd = clean_command(&repo().join("scripts").join(name));
            cmd.args(args).env("DIST_DIR", out_dir);
            for (k, v) in extra {
                cmd.env(k, v);
            }
            let listed: Vec<PathBuf> = stdout(&mut cmd).lines().map(PathBuf::from).collect();
            assert_eq!(listed.len(), args.len(), "{name} printed {listed:?}");
            listed
        };
        // arm64 with cut-down optimisation (build-binary.sh QUICK_ARCHS):
        // the amd64 build is the one CI boots and shares with
        // tests/packaging_e2e.rs; a second full LTO build would double the
        // CI's longest step.
        let debs = script(
            "build-deb.sh",
            &out,
            &["amd64", "arm64"],
            &[("QUICK_ARCHS", "arm64")],
        );
        // The same binaries: rpmbuild packages what cargo built for the debs.
        let rpms = script(
            "build-rpm.sh",
            &out,
            &["x86_64", "aarch64"],
            &[("NO_BUILD", "1")],
        );
        let rev2 = script(
            "build-deb.sh",
            &out.join("rev2"),
            &["amd64"],
            &[("NO_BUILD", "1"), ("DEB_REVISION", "2")],
        );
        Packages {
            deb_amd64: debs[0].clone(),
            deb_arm64: debs[1].clone(),
            deb_amd64_rev2: rev2[0].clone(),
            rpm_x86_64: rpms[0].clone(),
            rpm_aarch64: rpms[1].clone(),
        }
    })
}

pub fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
