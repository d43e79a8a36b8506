//! The fleet onboarding examples shipped under packaging/: the cloud-init
//! user-data and the Ansible role, checked by the real tools
//! (`cloud-init schema`, `ansible-playbook --syntax-check`, `ansible-lint`
//! with the production profile). Their booted runs live with the e2e harness.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn user_data() -> PathBuf {
    repo().join("packaging/cloud-init/user-data.yaml")
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn schema(path: &Path) -> Output {
    output(
        Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(path),
    )
}

#[test]
fn cloud_init_user_data_passes_the_schema() {
    let out = schema(&user_data());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Valid cloud-config"), "{}", text(&out));

    // The checker can fail: a wrongly typed key is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("user-data.yaml");
    let original = std::fs::read_to_string(user_data()).unwrap();
    assert!(original.contains("    defer: true\n"));
    std::fs::write(
        &bad,
        original.replace("    defer: true\n", "    defer: \"later\"\n"),
    )
    .unwrap();
    let out = schema(&bad);
    assert!(!out.status.success(), "a broken user-data passed");
    assert!(text(&out).contains("defer"), "{}", text(&out));
}

#[test]
fn cloud_init_user_data_carries_the_example_bundle_as_secrets() {
    let raw = std::fs::read_to_string(user_data()).unwrap();
    assert!(raw.starts_with("#cloud-config\n"));
    let doc: Value = serde_yaml_ng::from_str(&raw).expect("user-data is YAML");

    let files = doc["write_files"].as_sequence().expect("write_files");
    let mut names = Vec::new();
    for f in files {
        let path = f["path"].as_str().unwrap();
        let name = path
            .strip_prefix("/run/istio-vm/bundle/")
            .unwrap_or_else(|| panic!("{path} outside the bundle directory"));
        // Byte for byte the shipped example: the user-data is usable as is.
        let want = std::fs::read_to_string(repo().join("examples/bundle").join(name)).unwrap();
        assert_eq!(f["content"].as_str().unwrap(), want, "{name}");
        assert_eq!(f["owner"].as_str(), Some("root:root"), "{name}");
        assert_eq!(f["permissions"].as_str(), Some("0600"), "{name}");
        let deferred = f["defer"].as_bool().unwrap_or(false);
        assert_eq!(deferred, name == "istio-token", "{name}: defer");
        names.push(name.to_string());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "cluster.env",
            "hosts",
            "istio-token",
            "mesh.yaml",
            "root-cert.pem"
        ]
    );

    let runcmd: Vec<&str> = doc["runcmd"]
        .as_sequence()
        .expect("runcmd")
        .iter()
        .map(|c| c.as_str().expect("runcmd lines are shell strings"))
        .collect();
    // One shell script: the first failure stops it and fails the stage.
    assert_eq!(runcmd.first(), Some(&"set -e"));
    let install = runcmd
        .iter()
        .position(|c| *c == "istio-vm install --bundle /run/istio-vm/bundle")
        .expect("runcmd installs the bundle");
    let verify = runcmd
        .iter()
        .position(|c| *c == "istio-vm verify --wait 120s")
        .expect("runcmd verifies");
    let package = runcmd
        .iter()
        .position(|c| c.starts_with("apt-get install -y "))
        .expect("runcmd installs the package");
    assert!(package < install && install < verify);
}

fn ansible_dir() -> PathBuf {
    repo().join("packaging/ansible")
}

fn syntax_check(dir: &Path) -> Output {
    output(
        Command::new("ansible-playbook")
            .args(["--syntax-check", "playbook.yml"])
            .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
            .current_dir(dir),
    )
}

fn lint(dir: &Path) -> Output {
    output(
        Command::new("ansible-lint")
            .args(["--offline", "--nocolor", "--profile", "production"])
            .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
            .current_dir(dir),
    )
}

/// A scratch copy of packaging/ansible to break on purpose.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[test]
fn ansible_playbook_passes_the_syntax_check() {
    let out = syntax_check(&ansible_dir());
    assert!(out.status.success(), "{}", text(&out));

    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&ansible_dir(), scratch.path());
    let tasks = scratch.path().join("roles/istio_vm/tasks/main.yml");
    let original = std::fs::read_to_string(&tasks).unwrap();
    std::fs::write(
        &tasks,
        original.replace("ansible.builtin.stat:", "ansible.builtin.stat_typo:"),
    )
    .unwrap();
    let out = syntax_check(scratch.path());
    assert!(!out.status.success(), "a misspelled module passed");
}

#[test]
fn ansible_role_passes_ansible_lint_production_profile() {
    let out = lint(&ansible_dir());
    assert!(out.status.success(), "{}", text(&out));

    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&ansible_dir(), scratch.path());
    let tasks = scratch.path().join("roles/istio_vm/tasks/main.yml");
    let original = std::fs::read_to_string(&tasks).unwrap();
    // A task name that breaks the naming rule (names start upper case).
    std::fs::write(
        &tasks,
        original.replace("- name: Look for istio-vm", "- name: look for istio-vm"),
    )
    .unwrap();
    let out = lint(scratch.path());
    assert!(!out.status.success(), "ansible-lint accepted a bad role");
    assert!(text(&out).contains("name"), "{}", text(&out));
}

#[test]
fn ansible_role_keeps_the_token_out_of_logs() {
    let tasks: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(ansible_dir().join("roles/istio_vm/tasks/main.yml")).unwrap(),
    )
    .unwrap();
    let tasks = tasks.as_sequence().unwrap();
    let token_tasks: Vec<&Value> = tasks
        .iter()
        .filter(|t| serde_yaml_ng::to_string(t).unwrap().contains("istio-token"))
        .collect();
    assert!(!token_tasks.is_empty());
    for t in token_tasks {
        assert_eq!(t["no_log"].as_bool(), Some(true), "{t:?}");
        assert_eq!(t["ansible.builtin.copy"]["mode"].as_str(), Some("0600"));
    }
    // install: changed from istio-vm's JSON, failed from its exit code, and
    // check mode passes --check.
    let install = tasks
        .iter()
        .find(|t| t["name"].as_str() == Some("Onboard into the mesh"))
        .expect("install task");
    assert!(
        install["changed_when"]
            .as_str()
            .unwrap()
            .contains("from_json")
    );
    assert_eq!(
        install["failed_when"].as_str(),
        Some("istio_vm_install.rc != 0")
    );
    let argv = install["ansible.builtin.command"]["argv"].as_str().unwrap();
    assert!(argv.contains("'--check'") && argv.contains("ansible_check_mode"));
    assert_eq!(install["check_mode"].as_bool(), Some(false));
}
