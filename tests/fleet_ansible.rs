//! packaging/ansible for real: three booted Debian containers with sshd and
//! python3, each on its own veth on a private LAN (198.51.100.0/24, network
//! namespaces this test creates; see fleet::Lan), onboarded by real
//! `ansible-playbook` runs from a controller namespace over SSH with a key
//! generated here. The shipped playbook and inventory are used as they are,
//! in the role's default `repo` mode: the packages, the real istio-vm .deb
//! (this run's binary) and the stand-in of Istio's istio-sidecar .deb
//! (scripts/e2e/build-stand-in-deb.sh), are published with
//! scripts/build-repo.sh (a throwaway signing key) and served by a static
//! HTTP server on the LAN; the hosts install them with apt from that signed
//! repository. Host keys are not checked in the test's own SSH options (the
//! hosts' keys are made fresh here); the shipped ansible.cfg checks them.
//!
//! No istiod is reachable from the containers and the stand-in sidecar proxies
//! nothing, so the role's `verify` step is turned off (`istio_vm_verify_wait=`);
//! verify is tested against a fake istiod in tests/verify_fake.rs.

#[path = "common/bundlegen.rs"]
#[allow(dead_code)]
mod bundlegen;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/pinned.rs"]
mod pinned;
#[path = "common/repo.rs"]
mod repo;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bundlegen::BundleSpec;
use e2e::Vm;
use fleet::Lan;
use istio_vm::{layout, units};

const HOSTS: [&str; 3] = ["vm-1", "vm-2", "vm-3"];
// python3-debian: ansible.builtin.deb822_repository needs it on the host.
const ROOTFS_PACKAGES: &str = "openssh-server,python3,python3-apt,python3-debian";
const REPO_PORT: u16 = 8080;
const HOSTS_BLOCK: &str = "203.0.113.10 istiod.istio-system.svc\n";

/// The containers (stopped first on drop), the repository's server, then
/// the LAN they sit on.
struct Fleet {
    vms: Vec<Vm>,
    _server: repo::StaticServer,
    lan: Lan,
    project: tempfile::TempDir,
    _key: repo::SigningKey,
}

struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Fleet {
    fn new() -> Fleet {
        require_ansible();
        let tree = fleet::variant_tree(ROOTFS_PACKAGES);
        let lan = Lan::new("ans", HOSTS.len());
        // The shipped playbook, role, inventory and ansible.cfg, as they are.
        let (project, pubkey) = fleet::ansible_project("istio-vm-fleet-", "istio-vm-fleet-test");
        let p = project.path();
        // The signed repository, published where the playbook expects its
        // key (beside it) and served on the LAN.
        let dist = p.join("dist");
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::copy(fleet::istio_vm_deb(), dist.join("istio-vm_amd64.deb")).unwrap();
        let sidecar = e2e::stand_in_deb(p);
        std::fs::rename(&sidecar, dist.join("istio-sidecar.deb")).unwrap();
        let key = repo::SigningKey::new("istio-vm-archive");
        key.build_repo(&dist, &p.join("repo"));
        std::fs::copy(
            p.join("repo/istio-vm-archive-keyring.asc"),
            p.join("istio-vm-archive-keyring.asc"),
        )
        .unwrap();
        let server = repo::StaticServer::start(
            &lan.controller,
            fleet::CONTROLLER_ADDR,
            REPO_PORT,
            &p.join("repo"),
            None,
        );
        for h in HOSTS {
            BundleSpec::valid().write(&p.join("bundles").join(h));
        }

        // The copies of the tree are disk-bound: made side by side.
        let copies: Vec<Vm> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..HOSTS.len())
                .map(|i| {
                    let tree = &tree;
                    s.spawn(move || Vm::from_tree(&format!("ans{i}"), tree))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut vms = Vec::new();
        for ((i, h), mut vm) in HOSTS.iter().enumerate().zip(copies) {
            let net = lan.nspawn_network(i);
            vm.set_network(&net.iter().map(String::as_str).collect::<Vec<_>>());
            fleet::enable_ssh(&vm, &pubkey);
            // The LAN leads nowhere else: the istio-vm repository is the
            // hosts' only package source.
            let _ = std::fs::remove_file(vm.path("/etc/apt/sources.list"));
            std::fs::write(vm.path("/etc/hostname"), format!("{h}\n")).unwrap();
            let hosts = std::fs::read_to_string(vm.path("/etc/hosts")).unwrap_or_default();
            std::fs::write(vm.path("/etc/hosts"), format!("{hosts}127.0.1.1 {h}\n")).unwrap();
            vms.push(vm);
        }
        let mut f = Fleet {
            vms,
            _server: server,
            lan,
            project,
            _key: key,
        };
        let host_net = std::fs::read_link("/proc/self/ns/net").expect("our netns");
        for (i, vm) in f.vms.iter_mut().enumerate() {
            vm.boot();
            // Its network is the namespace made for it: lo and eth0 on the
            // LAN, no route anywhere else.
            let ns = std::fs::read_link(format!("/proc/{}/ns/net", vm.init_pid())).unwrap();
            let want = std::fs::read_link(format!("/run/netns/{}", f.lan.hosts[i].netns))
                .ok()
                .unwrap_or_else(|| {
                    // /run/netns/NAME is a bind mount, not a link: compare inodes.
                    use std::os::unix::fs::MetadataExt;
                    let ino = std::fs::metadata(format!("/run/netns/{}", f.lan.hosts[i].netns))
                        .unwrap()
                        .ino();
                    PathBuf::from(format!("net:[{ino}]"))
                });
            assert_eq!(ns, want, "{} is not in its own namespace", vm.name);
            assert_ne!(ns, host_net, "{} shares this machine's network", vm.name);
            let links =
                vm.ok("ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | tr '\\n' ' '");
            assert_eq!(links.trim(), "eth0 lo", "{}: links", vm.name);
            let routes =
                vm.ok("ip route; ip -6 route | grep -v '^fe80\\|^::1\\|^multicast' || true");
            assert_eq!(
                routes.trim(),
                format!(
                    "198.51.100.0/24 dev eth0 proto kernel scope link src {}",
                    f.lan.hosts[i].addr
                ),
                "{}: routes",
                vm.name
            );
            vm.wait_until(
                "sshd is active",
                Duration::from_secs(20),
                "systemctl is-active -q ssh",
            );
            // No firewall rule at all, so no connection tracking before
            // `install` loads the capture rules mid-way through Ansible's
            // SSH session: that session must survive (istio-vm returns
            // sshd's replies, `--sport 22`, before Istio's redirect).
        }
        f
    }

    fn dir(&self) -> &Path {
        self.project.path()
    }

    fn bundle(&self, host: &str) -> PathBuf {
        self.dir().join("bundles").join(host)
    }

    /// One `ansible-playbook playbook.yml` in the controller namespace.
    fn playbook(&self, extra: &[&str]) -> Run {
        let p = self.dir();
        // Bounded: a run that hangs fails the test instead of the suite.
        let mut cmd = self.lan.controller_cmd("timeout");
        cmd.args(["600", "ansible-playbook", "playbook.yml"])
            .args(["-e", "istio_vm_verify_wait="])
            .arg("-e")
            .arg(format!(
                "istio_vm_repo_url=http://{}:{REPO_PORT}",
                fleet::CONTROLLER_ADDR
            ))
            .args(extra)
            .current_dir(p)
            .env("ANSIBLE_CONFIG", p.join("ansible.cfg"))
            .env("ANSIBLE_HOME", p.join(".ansible"))
            .env("ANSIBLE_LOCAL_TEMP", p.join(".ansible/tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", p.join("cp"))
            .env("ANSIBLE_REMOTE_USER", "root")
            .env("ANSIBLE_PRIVATE_KEY_FILE", p.join("id_ed25519"))
            .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
            // Nothing of this machine's ~/.ssh is read or written.
            .env(
                "ANSIBLE_SSH_ARGS",
                "-F /dev/null -o ControlMaster=auto -o ControlPersist=120s \
                 -o ServerAliveInterval=5 -o ServerAliveCountMax=6 \
                 -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
            )
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_STDOUT_CALLBACK", "default")
            .env("ANSIBLE_CALLBACK_RESULT_FORMAT", "json")
            .env("ANSIBLE_CALLBACK_FORMAT_PRETTY", "false")
            .stdin(Stdio::null());
        let started = Instant::now();
        let out = cmd
            .output()
            .expect("running ip netns exec ansible-playbook");
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Digests, owners, modes and inodes of everything istio-vm places, the
    /// bundle on the host and the packages' state, per host.
    fn snapshot(&self) -> Vec<String> {
        let mut paths: Vec<&str> = layout::PLACEMENTS.iter().map(|p| p.path).collect();
        let unit_files = units::render(&units::Options::default());
        paths.extend(unit_files.iter().map(|g| g.path));
        paths.extend([
            layout::ETC_HOSTS,
            layout::STATE_FILE,
            "/etc/istio-vm/bundle/cluster.env",
            "/etc/istio-vm/bundle/mesh.yaml",
            "/etc/istio-vm/bundle/root-cert.pem",
            "/etc/istio-vm/bundle/hosts",
            "/etc/istio-vm/bundle/istio-token",
            "/var/lib/dpkg/status",
        ]);
        self.vms
            .iter()
            .map(|vm| {
                let mut s = fleet::digests(vm, &paths);
                s.push_str(&vm.ok("iptables-save | sed '/^#/d'"));
                s
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // The SSH masters ansible left (ControlPersist) end now, not later.
        if let Ok(dir) = std::fs::read_dir(self.dir().join("cp")) {
            for e in dir.flatten() {
                let _ = self
                    .lan
                    .controller_cmd("ssh")
                    .args(["-F", "/dev/null", "-o"])
                    .arg(format!("ControlPath={}", e.path().display()))
                    .args(["-O", "exit", "fleet-host"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn require_ansible() {
    for (tool, how) in [
        ("ansible-playbook", "pip install ansible-core"),
        ("ssh", "apt-get install -y openssh-client"),
        ("ssh-keygen", "apt-get install -y openssh-client"),
    ] {
        let found = std::process::Command::new(tool)
            .arg(if tool == "ansible-playbook" {
                "--version"
            } else {
                "-V"
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` is missing ({how}; scripts/install-test-deps.sh installs it)"
        );
    }
}

impl Fleet {
    /// Panics unless `run` succeeded, with the sidecar's journal of each host.
    #[track_caller]
    fn assert_ok(&self, run: &Run, what: &str) {
        if run.status.success() {
            return;
        }
        let journals: Vec<String> = self
            .vms
            .iter()
            .map(|vm| {
                let out =
                    vm.sh("journalctl -b --no-pager -u istio-vm-capture -u istio | tail -n 25");
                format!("{}:\n{}", vm.name, String::from_utf8_lossy(&out.stdout))
            })
            .collect();
        panic!(
            "{what}: ansible-playbook failed ({}):\n{}\n{}\n{}",
            run.status,
            run.stdout,
            run.stderr,
            journals.join("\n")
        );
    }
}

/// `PLAY RECAP` counters per host: `vm-1 : ok=12 changed=9 ...`.
fn recap(run: &Run) -> BTreeMap<String, BTreeMap<String, u32>> {
    let text = run
        .stdout
        .split("PLAY RECAP")
        .nth(1)
        .unwrap_or_else(|| panic!("no PLAY RECAP in:\n{}", run.stdout));
    let mut hosts = BTreeMap::new();
    for line in text.lines() {
        let Some((host, counters)) = line.split_once(" : ") else {
            continue;
        };
        let counters = counters
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().expect("a count")))
            .collect();
        hosts.insert(host.trim().to_string(), counters);
    }
    hosts
}

/// One task's outcome on one host, from the default callback's lines
/// (`changed: [vm-1] => {...}`, `fatal: [vm-2]: FAILED! => {...}`); with `-v`
/// every result carries its JSON (ansible-core ships no JSON stdout callback
/// since 2.19: it moved to the ansible.posix collection, which is not on PyPI
/// by itself).
struct Outcome {
    task: String,
    host: String,
    status: String,
    result: Option<serde_json::Value>,
}

fn outcomes(run: &Run) -> Vec<Outcome> {
    let mut v = Vec::new();
    let mut task = String::new();
    for line in run.stdout.lines() {
        if let Some(rest) = line.strip_prefix("TASK [") {
            let name = rest
                .split("] ")
                .next()
                .unwrap_or(rest)
                .trim_end_matches(']');
            // Role tasks are shown as `role : name`.
            task = name.rsplit(" : ").next().unwrap_or(name).to_string();
            continue;
        }
        let Some((status, rest)) = line.split_once(": [") else {
            continue;
        };
        if !["ok", "changed", "fatal", "skipping", "failed"].contains(&status) {
            continue;
        }
        let Some((host, rest)) = rest.split_once(']') else {
            continue;
        };
        let result = rest
            .split_once("=> ")
            .and_then(|(_, j)| serde_json::from_str(j).ok());
        v.push(Outcome {
            task: task.clone(),
            host: host.to_string(),
            status: status.to_string(),
            result,
        });
    }
    v
}

/// Per host, the names of the tasks that reported `changed` (for a loop:
/// any item).
fn changed_tasks(run: &Run) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = HOSTS
        .iter()
        .map(|h| (h.to_string(), BTreeSet::new()))
        .collect();
    for o in outcomes(run) {
        if o.status == "changed" {
            m.entry(o.host).or_default().insert(o.task);
        }
    }
    m
}

/// The JSON result of task `name` on `host` (needs `-v`).
fn task_result(run: &Run, name: &str, host: &str) -> (String, serde_json::Value) {
    outcomes(run)
        .into_iter()
        .find(|o| o.task == name && o.host == host && o.result.is_some())
        .map(|o| (o.status, o.result.unwrap()))
        .unwrap_or_else(|| panic!("no result of `{name}` on {host} in:\n{}", run.stdout))
}

fn set_token(dir: &Path, token: &str) {
    std::fs::write(dir.join(bundlegen::TOKEN), token).unwrap();
}

const TOKEN_TASK: &str = "Copy the bundle token";
const INSTALL_TASK: &str = "Onboard the VM with istio-vm install";
const INSTALL_PKGS_TASK: &str = "Install the packages from the repository (Debian family)";

/// Kept together because it is one scenario on one fleet: each step runs on
/// the state the previous one left (check mode, onboard, rerun, new tokens,
/// a bad bundle, air-gapped).
#[test]
fn one_playbook_onboards_three_vms_idempotently() {
    let f = Fleet::new();
    let mut secrets: Vec<String> = HOSTS
        .iter()
        .map(|h| std::fs::read_to_string(f.bundle(h).join(bundlegen::TOKEN)).unwrap())
        .collect();

    // 0. Check mode on fresh hosts: the role reports what it would do
    // (copies, installs) and the hosts stay as they are.
    let fresh = f.snapshot();
    let dry = f.playbook(&["--check"]);
    f.assert_ok(&dry, "--check run on fresh hosts");
    assert_eq!(f.snapshot(), fresh, "a --check run changed a fresh host");
    for (h, c) in recap(&dry) {
        assert!(
            c["changed"] > 0,
            "{h}: --check predicts no change on a fresh host"
        );
    }
    for h in HOSTS {
        let status: Vec<String> = outcomes(&dry)
            .into_iter()
            .filter(|o| o.task == INSTALL_TASK && o.host == h)
            .map(|o| o.status)
            .collect();
        assert_eq!(
            status,
            ["skipping"],
            "{h}: install in check mode without a bundle"
        );
    }

    // 1. The first run onboards all three.
    let first = f.playbook(&[]);
    f.assert_ok(&first, "first run");
    let r = recap(&first);
    for h in HOSTS {
        let c = &r[h];
        assert_eq!((c["failed"], c["unreachable"]), (0, 0), "{h}: {c:?}");
        assert!(
            c["changed"] > 0,
            "{h}: the first run changed nothing: {c:?}"
        );
    }
    for (vm, h) in f.vms.iter().zip(HOSTS) {
        fleet::assert_onboarded(vm, HOSTS_BLOCK);
        let placed = vm.ok(&format!("cat {}", layout::TOKEN));
        let given = std::fs::read_to_string(f.bundle(h).join(bundlegen::TOKEN)).unwrap();
        assert_eq!(placed.trim(), given.trim(), "{h}: placed token");
        assert!(
            vm.ok("dpkg-query -W -f '${Status}' istio-vm istio-sidecar")
                .matches("install ok installed")
                .count()
                == 2,
            "{h}: both packages installed"
        );
    }

    // 2. The same again: nothing changes on any host.
    let second = f.playbook(&[]);
    f.assert_ok(&second, "second run");
    for (h, c) in recap(&second) {
        assert_eq!(
            c["changed"], 0,
            "{h} changed on the second run:\n{}",
            second.stdout
        );
        assert_eq!(c["failed"], 0, "{h}");
    }
    eprintln!(
        "fleet: three-host first run {:.1} s, no-change run {:.1} s",
        first.elapsed.as_secs_f64(),
        second.elapsed.as_secs_f64()
    );

    // 3. New tokens, first in check mode: reported, nothing changes.
    let new_tokens: Vec<String> = HOSTS
        .iter()
        .map(|h| {
            let t = BundleSpec::valid().token_exp_in(7200).token_text();
            set_token(&f.bundle(h), &t);
            t
        })
        .collect();
    secrets.extend(new_tokens.iter().cloned());
    let before = f.snapshot();
    let check = f.playbook(&["--check"]);
    f.assert_ok(&check, "--check run");
    assert_eq!(f.snapshot(), before, "a --check run changed a host");
    for (h, tasks) in changed_tasks(&check) {
        assert!(
            tasks.contains(TOKEN_TASK),
            "{h}: --check does not report the new token: {tasks:?}"
        );
    }

    // 4. For real: only the token task changes, and the install task, whose
    // changed flag is istio-vm's (the token files).
    // With --diff too: istio-vm's diffs are shown, the token never is.
    let run = f.playbook(&["-v", "--diff"]);
    f.assert_ok(&run, "new-token run");
    let want: BTreeSet<String> = [TOKEN_TASK, INSTALL_TASK].map(String::from).into();
    for (h, tasks) in changed_tasks(&run) {
        assert_eq!(tasks, want, "{h}: tasks changed by a new token");
        let out: serde_json::Value = serde_json::from_str(
            task_result(&run, INSTALL_TASK, &h).1["stdout"]
                .as_str()
                .unwrap(),
        )
        .expect("install JSON");
        let changed: BTreeSet<&str> = out["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "changed")
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert!(
            changed.iter().all(|id| id.contains("istio-token")),
            "{h}: install changed more than the token files: {changed:?}"
        );
        assert!(!changed.is_empty(), "{h}: install changed nothing");
    }
    for (i, vm) in f.vms.iter().enumerate() {
        let placed = vm.ok(&format!(
            "cat {} {}",
            layout::TOKEN,
            layout::TOKEN_PERSISTENT
        ));
        assert_eq!(placed, format!("{0}{0}", new_tokens[i]), "{}", HOSTS[i]);
    }

    // 5. One host gets a bad bundle (an expired token): that host fails with
    // the finding in the output, the other two succeed, and the bad host
    // keeps what it had.
    let expired = BundleSpec::valid().token_exp_in(-3600).token_text();
    set_token(&f.bundle("vm-2"), &expired);
    secrets.push(expired);
    let before = f.snapshot();
    let bad = f.playbook(&["-v"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a failed host makes ansible-playbook exit 2:\n{}\n{}",
        bad.stdout,
        bad.stderr
    );
    let stats = recap(&bad);
    assert_eq!(stats["vm-2"]["failed"], 1, "{stats:?}");
    for h in ["vm-1", "vm-3"] {
        assert_eq!(stats[h]["failed"], 0, "{h}: {stats:?}");
        assert_eq!(stats[h]["changed"], 0, "{h}: {stats:?}");
    }
    let (status, failed) = task_result(&bad, INSTALL_TASK, "vm-2");
    assert_eq!(status, "fatal", "{failed}");
    assert_eq!(failed["rc"], 1, "{failed}");
    let out: serde_json::Value =
        serde_json::from_str(failed["stdout"].as_str().unwrap()).expect("install JSON");
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["changed"], false, "{out}");
    assert!(
        out["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "token.expired" && f["severity"] == "error"),
        "{out}"
    );
    assert!(bad.stdout.contains("token.expired"));
    // vm-2's placed files are untouched (only its bundle copy changed).
    let after = f.snapshot();
    for (i, h) in HOSTS.iter().enumerate() {
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("/etc/istio-vm/bundle/istio-token"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if *h == "vm-2" {
            assert_eq!(strip(&after[i]), strip(&before[i]), "{h} changed");
        } else {
            assert_eq!(after[i], before[i], "{h} changed");
        }
    }

    // 6. Air-gapped: `files` mode, the same signed repository copied from
    // the controller to the VM (on vm-1 only: the role's tasks are the same
    // on every host, and each run costs the suite a minute on three). A copy
    // whose Packages was changed after signing is refused by apt and nothing
    // installed changes; the good copy is used; a second run changes nothing.
    let files = [
        "-v",
        "--limit",
        "vm-1",
        "-e",
        "istio_vm_install_from=files",
        "-e",
        "istio_vm_repo_dir={{ playbook_dir }}/repo",
    ];
    let dists = f.dir().join("repo/apt/dists");
    let saved = f.dir().join("dists.saved");
    fleet::run(&["cp", "-a", fleet::path_of(&dists), fleet::path_of(&saved)]);
    let index = dists.join("stable/main/binary-amd64");
    let packages = std::fs::read_to_string(index.join("Packages")).unwrap();
    let forged = packages.replacen("Priority: optional", "Priority: optionaL", 1);
    assert_ne!(packages, forged);
    std::fs::write(index.join("Packages"), &forged).unwrap();
    fleet::run(&[
        "sh",
        "-c",
        &format!(
            "cd {0} && gzip -9nc Packages > Packages.gz && xz -9c Packages > Packages.xz",
            fleet::path_of(&index)
        ),
    ]);
    let vm1 = &f.vms[0];
    let installed = "dpkg-query -W istio-vm istio-sidecar; sha256sum /usr/bin/istio-vm";
    let dpkg_before = vm1.ok(installed);
    let refused = f.playbook(&files);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stdout);
    let (status, result) = task_result(&refused, INSTALL_PKGS_TASK, "vm-1");
    assert_eq!(status, "fatal", "{result}");
    let msg = result["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("Hash Sum mismatch"), "{result}");
    eprintln!("fleet: vm-1, files mode, changed Packages: {msg}");
    assert_eq!(
        vm1.ok(installed),
        dpkg_before,
        "a refused repository changed packages"
    );
    fleet::run(&["rm", "-rf", fleet::path_of(&dists)]);
    fleet::run(&["mv", fleet::path_of(&saved), fleet::path_of(&dists)]);
    let good = f.playbook(&files);
    f.assert_ok(&good, "files mode");
    let sources = vm1.ok("cat /etc/apt/sources.list.d/istio-vm.sources");
    assert!(
        sources.contains("URIs: file:///var/lib/istio-vm-repo"),
        "{sources}"
    );
    assert!(sources.contains("Signed-By:"), "{sources}");
    let again = f.playbook(&files);
    f.assert_ok(&again, "files mode, second run");
    let r = recap(&again);
    assert_eq!(r.keys().collect::<Vec<_>>(), ["vm-1"], "{r:?}");
    for (h, c) in r {
        assert_eq!(
            c["changed"], 0,
            "{h} changed on the second files-mode run:\n{}",
            again.stdout
        );
    }

    // No token ever reached ansible's output.
    for run in [
        &dry, &first, &second, &check, &run, &bad, &refused, &good, &again,
    ] {
        for s in &secrets {
            let s = s.trim();
            assert!(
                !run.stdout.contains(s) && !run.stderr.contains(s),
                "a token appears in ansible-playbook's output"
            );
        }
    }
}
