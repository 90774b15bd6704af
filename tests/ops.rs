//! What an operator runs besides the service: `--version`, completions and
//! man pages, `doctor`; and what a monitoring system scrapes: `/metrics`.

use std::process::{Command, Output};

/// Runs binary `bin` (`aic-relay`, …) with `args`, with no `AIC_*` settings from the caller.
fn run(bin: &str, args: &[&str]) -> Output {
    let exe = match bin {
        "aic-relay" => env!("CARGO_BIN_EXE_aic-relay"),
        "aic-daemon" => env!("CARGO_BIN_EXE_aic-daemon"),
        _ => env!("CARGO_BIN_EXE_aic-console"),
    };
    let mut command = Command::new(exe);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AIC_")) {
        command.env_remove(key);
    }
    command.args(args).output().expect("run the binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_names_binary_version_and_git_revision() {
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(|| "unknown".to_string(), |out| stdout(&out).trim().to_string());
    for bin in ["aic-relay", "aic-daemon", "aic-console"] {
        let out = run(bin, &["--version"]);
        assert!(out.status.success());
        assert_eq!(stdout(&out), format!("{bin} {} (git {git})\n", env!("CARGO_PKG_VERSION")));
    }
}

mod common;

use common::{TestDaemon, TestRelay, client, within};

/// Fetches a /metrics page and checks every line is a comment or `name{labels} value`.
async fn scrape(url: &str) -> String {
    let resp = within("GET /metrics", client().get(url).send()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let text = resp.text().await.unwrap();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        assert!(name_ok, "bad metric name: {line}");
        let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
        for label in labels.split(',').filter(|l| !l.is_empty()) {
            let (key, value) = label.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name: {line}");
            assert!(value.len() >= 2 && value.starts_with('"') && value.ends_with('"'), "bad label value: {line}");
        }
    }
    text
}

/// The value of the sample `series` (`name` or `name{labels}`).
fn sample(text: &str, series: &str) -> f64 {
    let line = text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series));
    line.unwrap_or_else(|| panic!("no {series} in\n{text}")).rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn metrics_parse_and_move_when_a_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let daemon = TestDaemon::start(&relay.ws(), &dir.path().join("daemon")).await;
    let url = format!("{}/metrics", relay.http());
    let before = scrape(&url).await;
    assert_eq!(sample(&before, "aic_agents_online"), 1.0);
    assert_eq!(sample(&before, "aic_agent_registrations_total"), 1.0);
    assert_eq!(sample(&before, "aic_execs_total{outcome=\"ok\"}"), 0.0);
    assert_eq!(sample(&before, "aic_output_bytes_total"), 0.0);

    let command = "printf hello-metrics";
    common::run(&relay.http(), daemon.code(), command).await;
    let after = scrape(&url).await;
    assert_eq!(sample(&after, "aic_execs_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(sample(&after, "aic_output_bytes_total"), "hello-metrics".len() as f64);
    assert_eq!(sample(&after, "aic_exec_duration_seconds_count"), 1.0);
    assert_eq!(sample(&after, "aic_exec_duration_seconds_bucket{le=\"+Inf\"}"), 1.0);
    let (status, _) =
        common::exec(&relay.http(), serde_json::json!({"code": "AIC-0000-0000-0000", "command": "true"})).await;
    assert_eq!(status, 403);
    let after = scrape(&url).await;
    assert_eq!(sample(&after, "aic_execs_total{outcome=\"rejected\"}"), 1.0);
    // Nothing that names a machine, a caller or a command.
    let code = daemon.code().to_string();
    for secret in [code.as_str(), "AIC-", "printf", "hello-metrics", "anonymous"] {
        assert!(!after.contains(secret), "{secret} in /metrics");
    }
    daemon.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_api_address() {
    let dir = tempfile::tempdir().unwrap();
    // A free port to hand the binary: bound, read, let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let relay = common::RelayProcess::start(dir.path(), &["--metrics-listen", &metrics_addr], &[]).await;
    let text = scrape(&format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(sample(&text, "aic_agents_online"), 0.0);
    let api = within("GET /metrics on the API", client().get(format!("{}/metrics", relay.http())).send()).await;
    assert_eq!(api.unwrap().status(), 404);
    relay.stop().await;
}
