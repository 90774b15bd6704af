//! The relay and daemons under test, as the real binaries in processes of
//! their own; what they hold, read from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `aic-relay` or `aic-daemon`.
pub struct Proc {
    child: Child,
    /// Its process id, for /proc.
    pub pid: u32,
}

/// How long a relay or daemon may take to say it is ready: a patience bound,
/// generous for CI's smoke on a slow, loaded machine.
const READY_PATIENCE: Duration = Duration::from_secs(60);

impl Proc {
    /// Starts `command` and waits ([`READY_PATIENCE`] at most) for a stderr line
    /// `ready` finds a value in; the rest of stderr is read and dropped so the pipe never fills.
    async fn start<T>(mut command: Command, ready: impl Fn(&str) -> Option<T>) -> anyhow::Result<(Self, T)> {
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).spawn()?;
        let pid = child.id().context("the child's pid")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let found = tokio::time::timeout(READY_PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(value) = ready(&line) {
                    return Ok(value);
                }
            }
            bail!("it exited before it was ready")
        })
        .await
        .with_context(|| format!("not ready within {READY_PATIENCE:?}"))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((Self { child, pid }, found))
    }

    /// SIGTERM, then waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// User plus system CPU time so far.
    pub fn cpu(&self) -> Duration {
        cpu(self.pid)
    }
}

/// Resident memory of `pid` in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// User plus system CPU time of `pid` (clock ticks of 10 ms).
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

/// Starts `aic-relay` from `bin` on 127.0.0.1:0 with `args`; its address.
pub async fn relay(bin: &Path, data: PathBuf, args: &[&str]) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut command = Command::new(bin.join("aic-relay"));
    command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(data).args(args);
    Proc::start(command, |line| {
        let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
    .await
    .context("starting aic-relay")
}

/// Starts `aic-daemon` from `bin` in auto mode, dialling `relay`; its code.
pub async fn daemon(bin: &Path, relay: SocketAddr, state: PathBuf, max: usize) -> anyhow::Result<(Proc, String)> {
    let mut command = Command::new(bin.join("aic-daemon"));
    command
        .args(["run", "--relay", &format!("ws://{relay}"), "--mode", "auto"])
        .args(["--max-concurrent", &max.to_string(), "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(state.join("aic.sock"));
    Proc::start(command, |line| line.strip_prefix("Session: ").map(str::to_owned)).await.context("starting aic-daemon")
}
