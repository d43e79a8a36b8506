//! The fleet examples pass the real checkers: `cloud-init schema` for the
//! user-data, `ansible-lint` (production profile) and `ansible-playbook
//! --syntax-check` for the role and playbook. The tools are installed by
//! scripts/install-test-deps.sh; a missing tool fails the test.

use std::path::Path;
use std::process::Command;

fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {cmd} (scripts/install-test-deps.sh installs it): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

#[test]
fn cloud_init_user_data_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "packaging/cloud-init/user-data.yaml",
        "packaging/cloud-init/user-data-repo.yaml",
    ] {
        let text = run(root, "cloud-init", &["schema", "--config-file", file]);
        assert!(text.contains("Valid cloud-config"), "{file}: {text}");
    }
}

/// The recommended user-data carries where the bundle is and its digest,
/// never the token (which would stay in the metadata service and in
/// /var/lib/cloud for the life of the VM).
#[test]
fn repo_user_data_carries_no_secret() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("packaging/cloud-init/user-data-repo.yaml")).unwrap();
    assert!(!text.contains("istio-token"), "{text}");
    assert!(!text.contains("eyJ"), "a JWT in the user-data:\n{text}");
    let install = text
        .lines()
        .find(|l| l.contains("[istio-vm, install"))
        .expect("an install line");
    assert!(
        install.contains("--bundle, \"https://") && install.contains("--sha256"),
        "{install}"
    );
}

#[test]
fn cloud_init_user_data_keeps_the_token_private() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("packaging/cloud-init/user-data.yaml")).unwrap();
    let token_entry = text
        .split("  - path: ")
        .find(|e| e.starts_with("/etc/istio-vm/bundle/istio-token"))
        .expect("user-data writes the token");
    assert!(
        token_entry.contains("permissions: \"0600\""),
        "{token_entry}"
    );
    assert!(token_entry.contains("owner: root:root"), "{token_entry}");
}

#[test]
fn ansible_role_passes_lint_and_syntax_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/ansible");
    let text = run(
        &dir,
        "ansible-playbook",
        &["--syntax-check", "playbook.yml"],
    );
    assert!(text.contains("playbook: playbook.yml"), "{text}");
    let text = run(
        &dir,
        "ansible-lint",
        &[
            "--offline",
            "--profile",
            "production",
            "playbook.yml",
            "roles/istio_vm",
        ],
    );
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn shipped_ansible_cfg_checks_host_keys() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/ansible");
    let cfg = std::fs::read_to_string(dir.join("ansible.cfg")).unwrap();
    let active: Vec<&str> = cfg
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .collect();
    assert!(
        !active.iter().any(|l| l
            .replace(' ', "")
            .to_ascii_lowercase()
            .starts_with("host_key_checking")),
        "ansible.cfg sets host_key_checking:\n{cfg}"
    );
    let tasks = std::fs::read_to_string(dir.join("roles/istio_vm/tasks/main.yml")).unwrap();
    for off in [
        "disable_gpg_check",
        "gpgcheck: false",
        "trusted=yes",
        "allow_unauthenticated",
    ] {
        assert!(!tasks.contains(off), "the role turns a check off: {off}");
    }
}

/// A play that leaves out istio_vm_bundle_dir fails at the role's argument
/// validation, which names it, before any task runs (the role's defaults do
/// not set it, so `required` is enforced).
#[test]
fn a_play_without_the_bundle_dir_fails_at_argument_validation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/ansible");
    let work = tempfile::tempdir().unwrap();
    let play = work.path().join("play.yml");
    std::fs::write(
        &play,
        "- hosts: all\n  gather_facts: false\n  roles:\n    - role: istio_vm\n      vars:\n        istio_vm_packages: []\n",
    )
    .unwrap();
    let out = Command::new("ansible-playbook")
        .args(["-i", "localhost,", "-c", "local"])
        .arg(&play)
        .env("ANSIBLE_ROLES_PATH", dir.join("roles"))
        .env("ANSIBLE_HOME", work.path().join(".ansible"))
        .env("ANSIBLE_LOCAL_TEMP", work.path().join(".ansible/tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .output()
        .expect("running ansible-playbook (scripts/install-test-deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    let failed = text
        .lines()
        .find(|l| l.starts_with("fatal: "))
        .unwrap_or_else(|| panic!("no failed task:\n{text}"));
    assert!(
        text.contains("TASK [istio_vm : Validating arguments against arg spec 'main'"),
        "{text}"
    );
    assert!(
        failed.contains("missing required arguments: istio_vm_bundle_dir"),
        "{failed}"
    );
    // Nothing after the validation ran.
    assert_eq!(text.matches("TASK [").count(), 1, "{text}");
}
