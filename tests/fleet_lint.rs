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
    let text = run(
        root,
        "cloud-init",
        &[
            "schema",
            "--config-file",
            "packaging/cloud-init/user-data.yaml",
        ],
    );
    assert!(text.contains("Valid cloud-config"), "{text}");
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
