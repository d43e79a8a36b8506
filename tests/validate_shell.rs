//! Issue 16.1: cluster.env values that Istio's start script pastes into a
//! shell command line are data of a type, never shell syntax; loader and
//! shell variables and a foreign EXEC_USER are refused unless allowed.
//!
//! The second half runs the repository's stand-in of Istio's
//! istio-start.sh (scripts/e2e/stand-in/istio-start.sh, whose launch line is
//! Istio's master line 135) on real files: once on hand-written cluster.env
//! files with each payload (they do run: the test can fail), once on the
//! cluster.env istio-vm placed (nothing runs).

mod common;
#[path = "common/apply.rs"]
mod fx;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::bundlegen::{BundleSpec, CLUSTER_ENV};
use common::istio_vm;
use istio_vm::bundle::Bundle;
use istio_vm::report::{Finding, Severity};
use istio_vm::validate::shell::{SHELL_VARS, UNSAFE_KEYS};
use istio_vm::validate::{Options, validate_with};
use time::OffsetDateTime;

/// One representative of every class of shell syntax, each placed inside an
/// otherwise valid-looking value.
const META_CLASSES: &[(&str, &str)] = &[
    ("command separator", "x;id"),
    ("background", "x&id"),
    ("pipe", "x|id"),
    ("and-list", "x&&id"),
    ("command substitution", "x$(id)"),
    ("backquote substitution", "x`id`"),
    ("parameter expansion", "x${HOME}"),
    ("bare dollar", "x$HOME"),
    ("output redirection", "x>/tmp/f"),
    ("input redirection", "x</etc/shadow"),
    ("newline", "x\nid"),
    ("carriage return", "x\rid"),
    ("tab", "x\tid"),
    ("space (word split)", "x id"),
    ("single quote", "x'y"),
    ("double quote", "x\"y"),
    ("backslash", "x\\y"),
    ("glob star", "x*"),
    ("glob question", "x?"),
    ("glob bracket", "x[ab]"),
    ("brace expansion", "x{a,b}"),
    ("tilde", "~root"),
    ("comment", "x#y"),
    ("subshell", "(id)"),
    ("history", "x!y"),
    ("process substitution", "<(id)"),
    ("non-ASCII", "x\u{a0}y"),
];

fn spec_with(key: &str, value: &str) -> BundleSpec {
    BundleSpec::valid().env(key, value)
}

fn findings(spec: &BundleSpec, opts: &Options) -> Vec<Finding> {
    let b = Bundle {
        files: spec.files(),
    };
    validate_with(&b, OffsetDateTime::now_utc(), opts).findings
}

fn errors_with(f: &[Finding], code: &str) -> usize {
    f.iter()
        .filter(|f| f.code == code && f.severity == Severity::Error)
        .count()
}

#[test]
fn every_shell_variable_refuses_every_metacharacter_class() {
    let mut failures = Vec::new();
    for var in SHELL_VARS {
        for (class, value) in META_CLASSES {
            // A space separates ISTIO_AGENT_FLAGS' words (istio-start.sh
            // splits them itself): not syntax there.
            if var.key == "ISTIO_AGENT_FLAGS" && *class == "space (word split)" {
                continue;
            }
            let f = findings(&spec_with(var.key, value), &Options::default());
            if errors_with(&f, "env.shell_unsafe") != 1 {
                failures.push(format!("{} = {value:?} ({class}): {f:?}", var.key));
            }
            // --allow-env never admits shell syntax.
            let allowed = Options {
                allow_env: vec![var.key.to_string()],
                ..Options::default()
            };
            let f = findings(&spec_with(var.key, value), &allowed);
            if errors_with(&f, "env.shell_unsafe") != 1 {
                failures.push(format!("allowed {} = {value:?} ({class})", var.key));
            }
        }
    }
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
}

#[test]
fn every_shell_variable_has_a_type() {
    // (key, a value of its type, a shell-safe value of the wrong type)
    let cases = [
        ("ISTIO_SVC_IP", "10.128.0.50", "10.128.0"),
        ("POD_NAME", "ratings-vm-1.zone-a", "ratings_vm"),
        ("ISTIO_NAMESPACE", "vm-apps", "VM-Apps"),
        ("ISTIO_BIN_BASE", "/usr/local/bin", "-rf"),
        ("ISTIO_LOG_DIR", "./var/log/istio", "/var/log:x"),
        (
            "ISTIO_AGENT_FLAGS",
            "--log_output_level=default:debug --concurrency 2",
            &"-x ".repeat(70),
        ),
        ("EXEC_USER", "istio-proxy", "-istio"),
    ];
    assert_eq!(cases.len(), SHELL_VARS.len());
    for (key, good, bad) in cases {
        let mut spec = spec_with(key, good);
        if key == "ISTIO_NAMESPACE" {
            // POD_NAMESPACE must agree; keep it so.
            spec = spec.env("POD_NAMESPACE", good);
        }
        assert_eq!(findings(&spec, &Options::default()), [], "{key}={good}");
        let f = findings(&spec_with(key, bad), &Options::default());
        assert!(
            f.iter().any(|f| f.code == "env.invalid_value"
                && f.severity == Severity::Error
                && f.message.contains(key)),
            "{key}={bad}: {f:?}"
        );
    }
}

#[test]
fn loader_and_shell_variables_need_allow_env() {
    let mut keys: Vec<&str> = UNSAFE_KEYS.to_vec();
    keys.extend(["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"]);
    for key in keys {
        let spec = spec_with(key, "/opt/lib");
        let f = findings(&spec, &Options::default());
        assert_eq!(errors_with(&f, "env.unsafe_key"), 1, "{key}: {f:?}");
        // Not also an "unknown key" typo warning.
        assert!(
            f.iter().all(|f| f.code != "env.unknown_key"),
            "{key}: {f:?}"
        );
        let allowed = Options {
            allow_env: vec![key.to_string()],
            ..Options::default()
        };
        let f = findings(&spec, &allowed);
        assert_eq!(f.len(), 1, "{key}: {f:?}");
        assert_eq!(
            (f[0].code.as_str(), f[0].severity),
            ("env.unsafe_key", Severity::Warning)
        );
    }
}

#[test]
fn exec_user_other_than_istio_proxy_needs_allow_env() {
    let spec = spec_with("EXEC_USER", "root");
    let f = findings(&spec, &Options::default());
    assert_eq!(errors_with(&f, "env.exec_user"), 1, "{f:?}");
    let allowed = Options {
        allow_env: vec!["EXEC_USER".into()],
        ..Options::default()
    };
    let f = findings(&spec, &allowed);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(
        findings(&spec_with("EXEC_USER", "istio-proxy"), &Options::default()),
        []
    );
}

#[test]
fn allow_env_by_flag_config_and_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let b = spec_with("LD_LIBRARY_PATH", "/opt/lib").write(&tmp.path().join("b"));
    let b = b.to_str().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = istio_vm();
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.args(args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.code(), v["findings"][0]["severity"].clone())
    };
    let base = ["--output", "json", "validate", "--bundle", b];
    assert_eq!(run(&base, &[]), (Some(1), "error".into()));
    let mut flag = base.to_vec();
    flag.extend(["--allow-env", "LD_LIBRARY_PATH"]);
    assert_eq!(run(&flag, &[]), (Some(0), "warning".into()));
    assert_eq!(
        run(&base, &[("ISTIO_VM_ALLOW_ENV", "PATH,LD_LIBRARY_PATH")]),
        (Some(0), "warning".into())
    );
    let cfg = tmp.path().join("config.toml");
    std::fs::write(&cfg, "allow_env = [\"LD_LIBRARY_PATH\"]\n").unwrap();
    let mut with_cfg = vec!["--config", cfg.to_str().unwrap()];
    with_cfg.extend(base);
    assert_eq!(run(&with_cfg, &[]), (Some(0), "warning".into()));
}

/// A scratch directory for one run of the stand-in start script: a fake
/// `sudo` (runs the `-c` string with bash as Istio's sudo line would), a
/// stub pilot-agent recording its arguments, and the marker file a payload
/// would create.
struct Launch {
    dir: tempfile::TempDir,
}

impl Launch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = bin.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "sudo",
            "#!/bin/bash\nwhile [ $# -gt 0 ] && [ \"$1\" != -c ]; do shift; done\nexec /bin/bash -c \"$2\"\n",
        );
        script(
            "pilot-agent",
            &format!(
                "#!/bin/bash\nprintf '%s\\n' \"$INSTANCE_IP\" \"$POD_NAME\" \"$POD_NAMESPACE\" \"$@\" > {}\n",
                dir.path().join("agent-args").display()
            ),
        );
        Launch { dir }
    }

    fn marker(&self) -> PathBuf {
        self.dir.path().join("marker")
    }

    /// What a payload runs: create the marker.
    fn payload(&self) -> String {
        format!("$(touch {})", self.marker().display())
    }

    /// Run the stand-in start script in `root` (it reads
    /// ./var/lib/istio/envoy/cluster.env, as Istio's master does).
    fn run(&self, root: &Path) -> std::process::Output {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e/stand-in/istio-start.sh");
        std::fs::create_dir_all(root.join("var/log/istio")).unwrap();
        Command::new("bash")
            .arg(script)
            .current_dir(root)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display()),
            )
            // Not istio-proxy: the script takes the `sudo ... bash -c` line.
            .env("USER", "root")
            .env("ISTIO_CUSTOM_IP_TABLES", "true")
            .env("ISTIO_BIN_BASE", self.dir.path().join("bin"))
            .output()
            .unwrap()
    }

    fn agent_args(&self) -> Option<Vec<String>> {
        std::fs::read_to_string(self.dir.path().join("agent-args"))
            .ok()
            .map(|s| s.lines().map(str::to_string).collect())
    }
}

/// The variables whose payload reaches the inner shell of the stand-in
/// (EXEC_USER goes to sudo quoted: its danger is the user, not syntax).
fn pasted_vars() -> Vec<&'static str> {
    SHELL_VARS
        .iter()
        .map(|v| v.key)
        .filter(|k| *k != "EXEC_USER")
        .collect()
}

#[test]
fn payloads_run_in_the_start_script_but_are_never_placed() {
    for key in pasted_vars() {
        let launch = Launch::new();
        let value = format!("vm1{}", launch.payload());
        let spec = spec_with(key, &value);

        // Control: this cluster.env, placed by hand, runs the payload.
        let by_hand = tempfile::tempdir().unwrap();
        let envdir = by_hand.path().join("var/lib/istio/envoy");
        std::fs::create_dir_all(&envdir).unwrap();
        std::fs::write(envdir.join(CLUSTER_ENV), spec.cluster_env_text()).unwrap();
        launch.run(by_hand.path());
        assert!(
            launch.marker().exists(),
            "{key}: the stand-in did not run the payload; the test proves nothing"
        );
        std::fs::remove_file(launch.marker()).unwrap();

        // istio-vm refuses the bundle and places nothing.
        let root = fx::debian_root();
        let b = tempfile::tempdir().unwrap();
        let bdir = spec.write(b.path());
        let out = fx::install(root.path(), &bdir, &["--no-start"], &[]);
        assert_eq!(out.status.code(), Some(1), "{key}");
        let v = fx::json(&out);
        assert!(
            v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["code"] == "env.shell_unsafe"),
            "{key}: {v:#}"
        );
        assert!(!root.path().join("var/lib/istio/envoy/cluster.env").exists());
        launch.run(root.path());
        assert!(!launch.marker().exists(), "{key}");
    }
}

#[test]
fn placed_cluster_env_runs_nothing_in_the_start_script() {
    // Values at the edge of what is allowed: every permitted punctuation.
    let spec = BundleSpec::valid()
        .env("POD_NAME", "ratings-vm-1.zone-a")
        .env(
            "ISTIO_AGENT_FLAGS",
            "--log_output_level=default:debug,ads:info --a=b@c%d+e",
        )
        .env("ISTIO_LOG_DIR", "./var/log/istio");
    let root = fx::debian_root();
    let b = tempfile::tempdir().unwrap();
    let bdir = spec.write(b.path());
    fx::ok(&fx::install(root.path(), &bdir, &["--no-start"], &[]));
    let launch = Launch::new();
    let out = launch.run(root.path());
    assert!(!launch.marker().exists());
    assert_eq!(
        launch.agent_args(),
        Some(
            [
                "198.51.100.10",
                "ratings-vm-1.zone-a",
                "vm-apps",
                "proxy",
                "--log_output_level=default:debug,ads:info",
                "--a=b@c%d+e",
            ]
            .map(String::from)
            .to_vec()
        ),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
