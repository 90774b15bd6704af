//! TLS served by the relay itself, with a private certificate authority: a
//! daemon that pins the CA links over wss://, curl runs a command over
//! https://, a daemon that trusts only the public roots refuses the
//! certificate, and SIGHUP swaps the certificate without a restart.

mod common;

use std::path::{Path, PathBuf};

use common::{DaemonProcess, RelayProcess, within};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA and a server certificate it signed, for localhost and 127.0.0.1, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.ca, ca.pem()).unwrap();
    std::fs::write(&files.cert, leaf.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

async fn tls_relay(dir: &Path, pki: &Pki) -> RelayProcess {
    let (cert, key) = (pki.cert.to_str().unwrap(), pki.key.to_str().unwrap());
    RelayProcess::start(&dir.join("relay"), &["--tls-cert", cert, "--tls-key", key], &[]).await
}

/// `curl --cacert ca` against `url`, posting `body` as JSON when given: its exit code and stdout.
async fn curl(ca: &Path, url: &str, body: Option<&str>) -> (i32, String) {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-sS", "--max-time", "20", "--cacert"]).arg(ca);
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "-d", body]);
    }
    let out = command.arg(url).output().await.expect("curl is installed (.ci/run installs it)");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_pinned_daemon_and_curl_reach_the_relay_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "one");
    let relay = tls_relay(dir.path(), &pki).await;
    let wss = format!("wss://localhost:{}", relay.addr.port());
    let ca = pki.ca.to_str().unwrap();
    let daemon =
        DaemonProcess::start_with_args(&wss, &dir.path().join("d"), &["--mode", "auto", "--ca-cert", ca], &[]).await;
    let url = format!("https://localhost:{}/api/v1/exec", relay.addr.port());
    let body = format!(r#"{{"code":"{}","command":"echo over-tls"}}"#, daemon.code);
    let (status, out) = curl(&pki.ca, &url, Some(&body)).await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains(r#""stdout":"over-tls\n""#), "{out}");
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_daemon_that_trusts_only_public_roots_refuses_a_private_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "one");
    let relay = tls_relay(dir.path(), &pki).await;
    let wss = format!("wss://localhost:{}", relay.addr.port());
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-daemon"))
        .args(["run", "--relay", &wss, "--state-dir"])
        .arg(dir.path().join("d"))
        .arg("--socket")
        .arg(dir.path().join("d.sock"))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let refused = within("the daemon to report the certificate", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(!line.starts_with("Session:"), "linked through an untrusted certificate: {line}");
            if line.contains("relay link") && line.to_lowercase().contains("certificate") {
                return line;
            }
        }
        panic!("the daemon exited without saying why it could not link")
    })
    .await;
    assert!(refused.contains("UnknownIssuer") || refused.contains("unknown issuer"), "{refused}");
    common::terminate(&daemon);
    let _ = daemon.wait().await;
    relay.stop().await;
}

#[tokio::test]
async fn sighup_swaps_the_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki(dir.path(), "first");
    let mut relay = tls_relay(dir.path(), &first).await;
    let second = pki(dir.path(), "second");
    let url = format!("https://127.0.0.1:{}/api/health", relay.addr.port());
    let get = |ca: PathBuf| {
        let url = url.clone();
        async move { curl(&ca, &url, None).await.0 == 0 }
    };
    assert!(get(first.ca.clone()).await, "the first certificate is served");
    assert!(!get(second.ca.clone()).await, "the second CA does not vouch for the first certificate");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let pid = rustix::process::Pid::from_raw(relay.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    // Logged just after the swap, by the task that made it: the event to wait
    // for, rather than a number of curl runs (each a process to start).
    relay.logged("SIGHUP: reloaded the TLS certificate").await;
    assert!(get(second.ca.clone()).await, "after SIGHUP the relay serves the renewed certificate");
    relay.stop().await;
}

#[tokio::test]
async fn a_bad_key_file_is_refused_at_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "one");
    std::fs::write(&pki.key, "not a key\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("relay"))
        .arg("--tls-cert")
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(pki.key.to_str().unwrap()) && stderr.contains("private key"), "{stderr}");
}

#[tokio::test]
async fn sighup_without_tls_leaves_the_relay_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&dir.path().join("relay"), &[], &[]).await;
    let pid = rustix::process::Pid::from_raw(relay.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    // The signal is handled on the relay's own time: once it says so, it is still up.
    relay.logged("SIGHUP: nothing to reload").await;
    let health = format!("{}/api/health", relay.http());
    let resp = within("health after SIGHUP", common::client().get(&health).send()).await.unwrap();
    assert_eq!(resp.status(), 200);
    relay.stop().await;
}

#[tokio::test]
async fn a_certificate_without_its_key_is_refused_at_start_whichever_way_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "one");
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, format!("tls_key = {:?}\n", pki.key.to_str().unwrap())).unwrap();
    let relay = |args: Vec<std::ffi::OsString>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("relay"))
            .args(args)
            .output()
            .unwrap()
    };
    let alone = relay(vec!["--tls-cert".into(), pki.cert.clone().into()]);
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a TLS certificate and its key go together"), "{stderr}");
    // The certificate as a flag and its key in the config file make a pair: the relay starts (and is stopped by
    // the bad header timeout that follows, which is refused in words).
    let mixed = relay(vec![
        "--tls-cert".into(),
        pki.cert.clone().into(),
        "--config".into(),
        file.into(),
        "--header-timeout".into(),
        "0s".into(),
    ]);
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert_eq!(mixed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--header-timeout 0s would cut every connection off"), "{stderr}");
}
