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
#[path = "common/servers.rs"]
mod servers;

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
    // Port 0, and the port it got from its log: a port picked here and let go
    // could be taken by another test before the relay binds it.
    let mut relay = common::RelayProcess::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"], &[]).await;
    let said = relay.logged("aic-relay metrics on http://").await;
    let url = said.split("metrics on ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let text = scrape(&url).await;
    assert_eq!(sample(&text, "aic_agents_online"), 0.0);
    let api = within("GET /metrics on the API", client().get(format!("{}/metrics", relay.http())).send()).await;
    assert_eq!(api.unwrap().status(), 404);
    relay.stop().await;
}

#[test]
fn generate_writes_completions_and_a_man_page_per_binary() {
    let dir = tempfile::tempdir().unwrap();
    let options = [
        ("aic-relay", &["listen", "metrics\\-listen", "public\\-url", "account add", "email"][..]),
        ("aic-daemon", &["relay", "state\\-dir", "approval\\-timeout", "run"][..]),
        ("aic-console", &["socket", "theme", "follow", "code reset"][..]),
    ];
    for (bin, wanted) in options {
        let out = dir.path().join(bin);
        let done = run(bin, &["generate", "completions", "--out", out.to_str().unwrap()]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        for file in [format!("{bin}.bash"), format!("_{bin}"), format!("{bin}.fish")] {
            let text = std::fs::read_to_string(out.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(text.contains(bin) && text.contains(wanted[0]), "{file} lacks {bin} or {}", wanted[0]);
        }
        let done = run(bin, &["generate", "man", "--out", out.to_str().unwrap()]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        let page = std::fs::read_to_string(out.join(format!("{bin}.1"))).unwrap();
        assert!(page.starts_with(".ie") || page.starts_with(".TH"), "not roff: {page}");
        assert!(page.contains(&format!(".TH {bin} 1")), "{page}");
        for option in wanted {
            let seen = page.contains(&format!("\\fB\\-\\-{option}\\fR")) || page.to_lowercase().contains(option);
            assert!(seen, "{bin}.1 lacks {option}:\n{page}");
        }
    }
}

/// Runs binary `bin` with `args` without blocking the runtime (an in-process relay must keep serving).
async fn run_async(bin: &str, args: &[&str]) -> Output {
    let (bin, args) = (bin.to_string(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    let task = tokio::task::spawn_blocking(move || run(&bin, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    within("the binary", task).await.unwrap()
}

/// The doctor's lines, checked to be `ok` or `problem` lines, as (status, line).
fn doctor_lines(out: &Output) -> Vec<(String, String)> {
    let text = stdout(out);
    text.lines()
        .map(|line| {
            let status = line.split_whitespace().next().unwrap_or_default().to_string();
            assert!(status == "ok" || status == "problem", "neither ok nor problem: {line}");
            (status, line.to_string())
        })
        .collect()
}

fn mkdir(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write_file(path: &std::path::Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn daemon_doctor_passes_a_good_setup() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let state = dir.path().join("state");
    mkdir(&state, 0o700);
    let socket = dir.path().join("run/aic.sock");
    let (state, socket) = (state.to_str().unwrap(), socket.to_str().unwrap());
    let out =
        run_async("aic-daemon", &["doctor", "--relay", &relay.ws(), "--state-dir", state, "--socket", socket]).await;
    let lines = doctor_lines(&out);
    let names: Vec<&str> = lines.iter().map(|(_, l)| l[9..].split(':').next().unwrap()).collect();
    assert_eq!(names, ["config", "state dir", "state file", "relay", "socket", "clock"], "{}", stdout(&out));
    assert!(lines.iter().all(|(status, _)| status == "ok"), "{}", stdout(&out));
    assert!(lines[3].1.contains("answers as an aic relay"), "{}", lines[3].1);
    assert_eq!(out.status.code(), Some(0));
    relay.stop().await;
}

#[tokio::test]
async fn daemon_doctor_names_each_problem_and_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    mkdir(&state, 0o755);
    write_file(&state.join("state.json"), "{}", 0o644);
    let run_dir = dir.path().join("run");
    mkdir(&run_dir, 0o777);
    let (_closed, port) = servers::closed_port();
    let relay = format!("ws://127.0.0.1:{port}");
    let socket = run_dir.join("aic.sock");
    let args =
        ["doctor", "--relay", &relay, "--state-dir", state.to_str().unwrap(), "--socket", socket.to_str().unwrap()];
    let out = run_async("aic-daemon", &args).await;
    let text = stdout(&out);
    let state = state.display();
    for expected in [
        format!("problem  state dir: {state} has mode 755: others can reach it; fix: chmod 700 {state}"),
        format!(
            "problem  state file: {state}/state.json has mode 644: others can reach it; fix: chmod 600 {state}/state.json"
        ),
        format!("problem  relay: cannot connect to 127.0.0.1:{port}"),
        format!("problem  socket: {} must be a directory", run_dir.display()),
    ] {
        assert!(text.lines().any(|l| l.starts_with(&expected)), "no line {expected:?} in\n{text}");
    }
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 check(s) found a problem"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mode = \"yolo\"\n").unwrap();
    let out = run_async("aic-daemon", &["doctor", "--config", bad.to_str().unwrap(), "--relay", &relay]).await;
    assert!(stdout(&out).starts_with("problem  config: config file"), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn relay_doctor_passes_a_good_setup_and_names_problems() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    mkdir(&data, 0o700);
    let common = ["--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let out = run_async("aic-relay", &[&common[..], &["doctor"]].concat()).await;
    let lines = doctor_lines(&out);
    assert_eq!(lines.len(), 6, "{}", stdout(&out));
    // The default config file is named as the source only when it is there.
    let config = lines[0].1.strip_prefix("ok       config: ").expect("a config line");
    let named = config.split(" (listen ").next().unwrap();
    assert!(config.starts_with("no file at ") || std::path::Path::new(named).is_file(), "{config}");
    assert!(lines.iter().all(|(status, _)| status == "ok"), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(0));

    mkdir(&data, 0o755);
    write_file(&data.join("secret.key"), "00", 0o644);
    let out = run_async("aic-relay", &[&common[..], &["doctor"]].concat()).await;
    let text = stdout(&out);
    let data = data.display();
    assert!(
        text.contains(&format!("problem  data dir: {data} has mode 755: others can reach it; fix: chmod 700 {data}\n")),
        "{text}"
    );
    assert!(text.contains(&format!("problem  secret: {data}/secret.key has mode 644")), "{text}");
    assert_eq!(out.status.code(), Some(1));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = 8080\n").unwrap();
    let out = run_async("aic-relay", &["--config", bad.to_str().unwrap(), "doctor"]).await;
    let expected = format!("problem  config: config file {}, key `listen`: expected an address", bad.display());
    assert!(stdout(&out).starts_with(&expected), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_bad_log_level_is_refused_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("aic-relay", &["--data-dir", dir.path().to_str().unwrap(), "--log-level", "info,["]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("aic-relay: --log-level \"info,[\": ") && err.contains("write e.g. info, debug"), "{err}");
}
