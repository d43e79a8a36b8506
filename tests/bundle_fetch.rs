//! Issue 16: bundle downloads end within a total deadline at bounded memory
//! (a server trickling one byte a second), secrets in a bundle URL never
//! reach any output, and an archive over the unpack cap is "too large".

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bundlegen::{BundleSpec, RawEntry, raw_tar_gz, sha256_hex};
use common::istio_vm;
use istio_vm::bundle;

#[derive(Clone, Copy)]
enum Serve {
    /// Headers announcing 1 MiB, then one body byte a second.
    Trickle,
    /// A full answer with this status and body.
    Answer(&'static str, &'static [u8]),
}

/// An HTTPS server on 127.0.0.1 with a certificate from a fresh CA, serving
/// every connection on its own thread until the listener is dropped with the
/// returned guard. Returns (base URL, CA PEM, guard).
fn https_server(serve: Serve) -> (String, String, Server) {
    let (config, ca_pem) = common::tls::loopback_server_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let tcp = match listener.accept() {
                Ok((tcp, _)) => tcp,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Polling the stop flag; accept has no timeout of its own.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => return,
            };
            tcp.set_nonblocking(false).unwrap();
            let config = config.clone();
            let stop = stop2.clone();
            std::thread::spawn(move || serve_one(tcp, config, serve, stop));
        }
    });
    (url, ca_pem, Server(stop))
}

/// Stops the accept loop (and trickles) when dropped.
struct Server(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_one(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    serve: Serve,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => req.push(byte[0]),
            _ => return,
        }
    }
    match serve {
        Serve::Answer(status, body) => {
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(head.as_bytes());
            let _ = tls.write_all(body);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        Serve::Trickle => {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n";
            if tls
                .write_all(head.as_bytes())
                .and_then(|_| tls.flush())
                .is_err()
            {
                return;
            }
            // One byte a second is the attack: the pace is the point here,
            // not a synchronisation.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if tls.write_all(b"\x1f").and_then(|_| tls.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Run istio-vm to its end with a watchdog; returns (output, wall time, peak
/// RSS in KiB from the kernel's accounting of the reaped child).
fn run_measured(args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, Duration, i64) {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("istio-vm"));
    cmd.args(args)
        .env_remove("ISTIO_VM_ROOT")
        .env_remove("ISTIO_VM_CONFIG")
        .env_remove("ISTIO_VM_OUTPUT")
        .env("NO_PROXY", "127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    // Watchdog: a run that hangs is killed (and then fails the time bound).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            if done2.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped (std's Child is never
    // waited on below); status and usage are valid pointers.
    let r = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let elapsed = start.elapsed();
    std::mem::forget(child);
    let code = if nix::libc::WIFEXITED(status) {
        nix::libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let output = std::process::Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    };
    assert!(
        code >= 0,
        "killed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output, elapsed, usage.ru_maxrss)
}

#[test]
fn trickling_server_ends_at_the_deadline_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, ca_pem, _server) = https_server(Serve::Trickle);
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let src = format!("{url}/bundle.tar.gz");
    let sha = "a".repeat(64);
    let (out, elapsed, rss_kib) = run_measured(
        &[
            "--output", "json", "validate", "--bundle", &src, "--sha256", &sha,
        ],
        &[
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
            ("ISTIO_VM_FETCH_TIMEOUT", "3s"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["code"], "bundle.fetch", "{v:#}");
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(msg.contains("within 3s"), "{msg}");
    eprintln!("trickle: ended after {elapsed:?}, peak RSS {rss_kib} KiB");
    // Three seconds of deadline; generous room for a loaded machine, far
    // below the hours a 1 MiB trickle would take.
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB");
}

#[test]
fn url_secrets_never_reach_any_output() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = BundleSpec::valid().tar_gz(None);
    let (url_404, ca_404, _s1) = https_server(Serve::Answer("404 Not Found", b"nope"));
    let leaked: &'static [u8] = Box::leak(bundle.clone().into_boxed_slice());
    let (url_ok, ca_ok, _s2) = https_server(Serve::Answer("200 OK", leaked));
    let (url_slow, ca_slow, _s3) = https_server(Serve::Trickle);
    // A port nothing listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let ca_file = |name: &str, pem: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ca404 = ca_file("404.pem", &ca_404);
    let caok = ca_file("ok.pem", &ca_ok);
    let caslow = ca_file("slow.pem", &ca_slow);
    let secret = |base: &str| {
        format!(
            "{}//user:pw-SECRET-1@{}/b.tgz?X-Amz-Signature=SECRET-2&X-Amz-Credential=SECRET-3#SECRET-4",
            "https:",
            base.trim_start_matches("https://")
        )
    };
    let good = sha256_hex(&bundle);
    let wrong = "0".repeat(64);
    // (what, url, ca, sha256)
    let cases: Vec<(&str, String, Option<String>, String)> = vec![
        ("untrusted certificate", secret(&url_ok), None, good.clone()),
        ("HTTP 404", secret(&url_404), Some(ca404), good.clone()),
        ("wrong checksum", secret(&url_ok), Some(caok.clone()), wrong),
        (
            "connection refused",
            secret(&closed),
            Some(caok),
            good.clone(),
        ),
        ("deadline", secret(&url_slow), Some(caslow), good),
    ];
    for (what, url, ca, sha) in &cases {
        for command in ["validate", "install"] {
            for output in ["text", "json"] {
                let root = tempfile::tempdir().unwrap();
                let mut cmd = istio_vm();
                cmd.env("ISTIO_VM_FETCH_TIMEOUT", "2s");
                match ca {
                    Some(ca) => cmd.env("SSL_CERT_FILE", ca),
                    None => cmd.env_remove("SSL_CERT_FILE"),
                };
                let out = cmd
                    .args(["-vvv", "--output", output, "--root"])
                    .arg(root.path())
                    .args([command, "--bundle", url, "--sha256", sha])
                    .output()
                    .unwrap();
                let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
                let all = String::from_utf8_lossy(&all);
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{what} {command} {output}: {all}"
                );
                assert!(
                    !all.contains("SECRET") && !all.contains("pw-"),
                    "{what} {command} {output} leaks:\n{all}"
                );
                assert!(
                    all.contains("127.0.0.1"),
                    "{what}: the host is still named: {all}"
                );
            }
        }
    }
}

#[test]
fn archive_over_the_unpack_cap_is_too_large() {
    // 40,000 empty entries (a 512-byte header each: 20 MB unpacked, over the
    // 16 MiB cap) and then the five bundle files.
    let mut entries: Vec<RawEntry> = (0..40_000)
        .map(|i| RawEntry::file(format!("pad/{i}").as_bytes(), b""))
        .collect();
    for (name, data) in BundleSpec::valid().files() {
        entries.push(RawEntry::file(name.as_bytes(), &data));
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("b.tar.gz");
    std::fs::write(&p, raw_tar_gz(&entries)).unwrap();
    let f = bundle::load(p.to_str().unwrap(), None).unwrap_err();
    let codes: Vec<&str> = f.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, ["bundle.too_large"], "{f:#?}");
}
