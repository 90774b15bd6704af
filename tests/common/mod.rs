//! Starts relays and daemons on port 0 and temp dirs, in-process or as the
//! real binaries, and waits on signals rather than sleeping.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aic::daemon::{self, LinkStatus};
use aic::protocol::SessionCode;
use aic::relay::{self, AppState};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything a test waits on; a hang fails instead of stalling CI.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Upper bound for moving tens of MiB through relay and daemon in one wait:
/// a debug build on a loaded 2-core machine was seen to take over 30 s, and
/// a shaken run here 59 s for three 64 MiB tests two at a time; CI may be
/// three times slower. Only a hang ever waits this long.
pub const BULK_PATIENCE: Duration = Duration::from_secs(300);

/// Awaits `fut`, failing the test after [`PATIENCE`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    within_for(PATIENCE, what, fut).await
}

/// Awaits `fut`, failing the test after `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A relay running in this process.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The running relay's state: its store and keys, for setting up accounts.
    pub state: AppState,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestRelay {
    /// A relay with default settings on a fresh port and data dir.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(relay::Config::new(data_dir.to_path_buf()), "127.0.0.1:0").await
    }

    /// A relay with `config`, listening on `addr` (port 0 for a fresh port).
    pub async fn start_with(config: relay::Config, addr: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let data_dir = config.data_dir.clone();
        let state = AppState::open(config, None, shutdown.clone()).await.expect("open relay");
        let task = tokio::spawn(relay::serve(listener, state.clone()));
        Self { addr, data_dir, state, shutdown, task }
    }

    /// Base URL for HTTP.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL for daemons.
    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Adds an account and returns its API key.
    pub async fn account(&self, email: &str) -> String {
        aic::relay::accounts::add_account(&self.state.store, &self.state.keys, email, aic::relay::now_ms())
            .await
            .unwrap()
    }

    /// Stops it and waits until it has let go of its port and database.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("relay shutdown", self.task).await.unwrap().unwrap();
    }
}

/// A daemon running in this process.
pub struct TestDaemon {
    pub status: watch::Receiver<LinkStatus>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestDaemon {
    /// A daemon in auto mode dialling `relay_ws`, keeping state (and its socket) in `state_dir`.
    pub async fn start(relay_ws: &str, state_dir: &Path) -> Self {
        let mut config = daemon_config(relay_ws, state_dir);
        config.mode = Some(daemon::Mode::Auto);
        Self::start_with(config).await
    }

    /// A daemon with `config`.
    pub async fn start_with(config: daemon::Config) -> Self {
        let (tx, status) = watch::channel(LinkStatus::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon::run(config, tx, shutdown.clone()));
        let mut d = Self { status, shutdown, task };
        d.online().await;
        d
    }

    /// Waits until the link is up and returns the code.
    pub async fn online(&mut self) -> SessionCode {
        let status = within("daemon online", self.status.wait_for(|s| s.connected)).await.expect("daemon ended");
        status.code.expect("connected without a code")
    }

    /// Waits until the link is down.
    pub async fn offline(&mut self) {
        within("daemon offline", self.status.wait_for(|s| !s.connected)).await.expect("daemon ended");
    }

    /// The current code.
    pub fn code(&self) -> SessionCode {
        self.status.borrow().code.expect("no code yet")
    }

    /// Stops it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("daemon shutdown", self.task).await.unwrap().unwrap();
    }
}

/// Daemon settings for tests: state and socket in `state_dir`, mode left to the saved one.
pub fn daemon_config(relay_ws: &str, state_dir: &Path) -> daemon::Config {
    let mut config = daemon::Config::new(relay_ws, state_dir.to_path_buf(), state_dir.join("aic.sock"));
    // Jobs are supervised by the daemon's binary, which this test process is not.
    config.job_runner = Some(env!("CARGO_BIN_EXE_aic-daemon").into());
    config
}

/// A real `aic-daemon` process; its stderr is collected.
pub struct DaemonProcess {
    pub child: tokio::process::Child,
    pub code: SessionCode,
    stderr: Log,
}

impl DaemonProcess {
    /// Starts `aic-daemon run` in auto mode and waits for its `Session:` line.
    pub async fn start(relay_ws: &str, state_dir: &Path, envs: &[(&str, &str)]) -> Self {
        Self::start_with_args(relay_ws, state_dir, &["--mode", "auto"], envs).await
    }

    /// Starts `aic-daemon run` with extra `args` (socket in `state_dir`) and waits for its `Session:` line.
    pub async fn start_with_args(relay_ws: &str, state_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-daemon"));
        command
            .args(["run", "--relay", relay_ws, "--state-dir"])
            .arg(state_dir)
            .arg("--socket")
            .arg(state_dir.join("aic.sock"))
            .args(args)
            .envs(envs.iter().copied());
        let (child, code, stderr) = Watched::spawn(command, "the Session: line", |line| {
            line.strip_prefix("Session: ").map(|code| code.parse().expect("a valid code"))
        })
        .await;
        Self { child, code, stderr }
    }

    /// Sends SIGTERM, waits for exit, and returns everything it wrote to stderr.
    pub async fn stop(mut self) -> String {
        terminate(&self.child);
        let status = within("aic-daemon exit", self.child.wait()).await.unwrap();
        assert!(status.success(), "aic-daemon exited with {status}");
        self.stderr.all().await
    }
}

/// Starting a binary and reading its stderr until a line says it is ready.
struct Watched;

impl Watched {
    /// Spawns `command` and waits for the first stderr line `ready` finds a
    /// value in; the rest of stderr is collected in the background.
    async fn spawn<T>(
        mut command: tokio::process::Command,
        what: &str,
        mut ready: impl FnMut(&str) -> Option<T>,
    ) -> (tokio::process::Child, T, Log) {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the binary");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let value = within(what, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push_str(&line);
                seen.push('\n');
                if let Some(value) = ready(&line) {
                    return value;
                }
            }
            panic!("it exited before {what}:\n{seen}")
        })
        .await;
        let (tx, so_far) = watch::channel(seen);
        let task = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|seen| {
                    seen.push_str(&line);
                    seen.push('\n');
                });
            }
            tx.borrow().clone()
        });
        (child, value, Log { so_far, task })
    }
}

/// A binary's stderr, collected in the background.
struct Log {
    /// Everything it has written so far, to wait on a line.
    so_far: watch::Receiver<String>,
    /// Ends with everything it wrote, once it has closed stderr.
    task: JoinHandle<String>,
}

impl Log {
    /// Waits (bounded) until it has written `text`; returns the line that holds it.
    async fn until(&mut self, text: &str) -> String {
        let closed =
            within(&format!("{text:?} in the log"), self.so_far.wait_for(|seen| seen.contains(text))).await.is_err();
        let seen = self.so_far.borrow();
        assert!(!closed, "it closed stderr without writing {text:?}:\n{}", *seen);
        seen.lines().find(|line| line.contains(text)).unwrap().to_owned()
    }

    /// Everything it wrote, once it has closed stderr.
    async fn all(self) -> String {
        within("its stderr to close", self.task).await.unwrap()
    }
}

/// SIGTERM to a child process.
pub fn terminate(child: &tokio::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

/// An HTTP client for the API.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `POST /api/v1/exec` with `body`; returns status and parsed JSON.
pub async fn exec(relay: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = within("exec", client().post(format!("{relay}/api/v1/exec")).json(&body).send()).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

/// Runs `command` on `code` and expects it to have run.
pub async fn run(relay: &str, code: SessionCode, command: &str) -> serde_json::Value {
    let (status, body) = exec(relay, serde_json::json!({"code": code.to_string(), "command": command})).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// What a run of the real `aic-console` showed its user.
pub struct Console {
    /// Its exit code (-1 when a signal ended it).
    pub code: i32,
    /// What it printed.
    pub stdout: String,
    /// What it printed as errors.
    pub stderr: String,
}

impl From<std::process::Output> for Console {
    fn from(out: std::process::Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }
}

/// Runs the real `aic-console` with `args` against the daemon's control `socket`.
pub async fn console(socket: &Path, args: &[&str]) -> Console {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-console"))
        .args(args)
        .env("AIC_SOCKET", socket)
        .stdin(Stdio::null())
        .output();
    within("aic-console", out).await.unwrap().into()
}

/// Whether a process with `pid` is still alive (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name: state ppid pgrp ...
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2].parse() == Ok(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `check` (every 20 ms) until it is true, for at most [`PATIENCE`]:
/// a loaded machine may take seconds over what is quick on an idle one. For
/// facts no event announces (a process being reaped by the kernel).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never became true: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Streams a command that detaches `setsid sleep 300` and prints its pid,
/// then hangs up: the detached sleep must die with its caller.
pub async fn a_hang_up_kills_what_the_command_detached(relay: &str, code: &str) {
    let body = serde_json::json!({"code": code, "command": "setsid sleep 300 & echo $!; sleep 100"});
    let mut resp = client()
        .post(format!("{relay}/api/v1/exec"))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    let pid = first_line_number("the detached pid", &mut resp).await;
    assert!(alive(pid));
    drop(resp);
    eventually("the detached `sleep 300` is killed when its caller goes", || !alive(pid)).await;
}

/// A real `aic-relay` process on a fresh port; its stderr is collected.
pub struct RelayProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    stderr: Log,
}

impl RelayProcess {
    /// Starts `aic-relay` with `args` on 127.0.0.1:0 and waits until it listens.
    pub async fn start(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", args, envs).await
    }

    /// Starts `aic-relay` with `args` on `listen` and waits until it listens.
    pub async fn start_on(data_dir: &Path, listen: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_aic-relay"));
        command.args(["--listen", listen, "--data-dir"]).arg(data_dir).args(args).envs(envs.iter().copied());
        let (child, addr, stderr) = Watched::spawn(command, "the relay to listen", |line| {
            let rest = &line[line.find("listening on ")? + "listening on ".len()..];
            let rest = rest.strip_prefix("http://").or_else(|| rest.strip_prefix("https://"))?;
            Some(rest.split_whitespace().next()?.parse().unwrap())
        })
        .await;
        Self { child, addr, stderr }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Waits (bounded) until it has logged `text`: the signal that something
    /// it does on its own time (a reload on SIGHUP) is done. Returns the line.
    pub async fn logged(&mut self, text: &str) -> String {
        self.stderr.until(text).await
    }

    /// Sends SIGTERM, expects a clean exit, and returns its stderr.
    pub async fn stop(mut self) -> String {
        terminate(&self.child);
        let status = within("aic-relay exit", self.child.wait()).await.unwrap();
        assert!(status.success(), "aic-relay exited with {status}");
        self.stderr.all().await
    }
}

/// Every file below `dir`, with its bytes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// A WebSocket to the relay's agent endpoint, as a fake agent holds it.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one protocol message as a fake agent.
pub async fn send(ws: &mut Ws, msg: &aic::protocol::agent::AgentMessage) {
    use futures_util::SinkExt;
    let text = aic::protocol::agent::encode(msg);
    ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await.unwrap();
}

/// A fake agent, registered with `capabilities`: its socket and its code.
pub async fn fake_agent_speaking(relay: &TestRelay, capabilities: &[&str]) -> (Ws, aic::protocol::agent::Credentials) {
    use aic::protocol::agent::{AgentInfo, AgentMessage, Credentials, PROTOCOL_VERSION, RelayMessage};
    let mut ws = tokio_tungstenite::connect_async(format!("{}/agent/ws", relay.ws())).await.unwrap().0;
    let capabilities = capabilities.iter().map(|c| c.to_string()).collect();
    let agent = AgentInfo { hostname: "fake".into(), capabilities, ..Default::default() };
    send(&mut ws, &AgentMessage::Hello { protocol: PROTOCOL_VERSION, agent, credentials: None }).await;
    match recv(&mut ws).await {
        Some(RelayMessage::Registered { code, token: Some(token), .. }) => (ws, Credentials { code, token }),
        other => panic!("expected a registration, got {other:?}"),
    }
}

/// The next protocol message, skipping control frames; `None` once closed.
pub async fn recv(ws: &mut Ws) -> Option<aic::protocol::agent::RelayMessage> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    within("a relay message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(aic::protocol::agent::decode(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
}

/// The number a command printed on its first line, read from its SSE answer
/// as it streams (`what` names it if it never comes).
pub async fn first_line_number(what: &str, resp: &mut reqwest::Response) -> i32 {
    let mut seen = String::new();
    within(what, async {
        loop {
            seen.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().unwrap()));
            let Some(start) = seen.find("\"text\":\"") else { continue };
            if let Some(end) = seen[start + 8..].find("\\n") {
                return seen[start + 8..start + 8 + end].parse().unwrap();
            }
        }
    })
    .await
}
