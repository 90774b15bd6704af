//! The job supervisor: the daemon's binary re-executed as `aic-daemon
//! job-run DIR`. It detaches (a second process in a session of its own, so
//! nobody has to reap it and the daemon's end is not its end), runs the
//! job's `sh -c` in a process group of its own, spools its output, enforces
//! its timeout and writes how it ended. Under systemd the daemon starts it
//! through `systemd-run --scope`, so that it also leaves the service's
//! cgroup and `systemctl restart aic-daemon` does not kill it.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::record::{self, End, Pids, Record};
use super::spool::Writer;
use crate::clock::now_ms;
use crate::daemon::executor::{KILL_GRACE, NON_INTERACTIVE_ENV};
use crate::protocol::agent::{OUTPUT_CHUNK, Refusal, Stream};
use crate::protocol::jobs::JobKind;

/// The hidden subcommand the supervisor runs as.
pub const SUBCOMMAND: &str = "job-run";
/// The flag that marks the second, detached stage.
pub const DETACHED: &str = "--detached";
/// What the detached stage prints once the job's `pid` or `end.json` is written.
const READY: &str = "ready";

/// Starts the supervisor of the job in `dir` with `runner` (the daemon's
/// binary), through `systemd-run --scope` when the daemon is a systemd
/// service, and returns once the job runs (its `pid` is written) or has
/// ended without running (its `end.json` is).
pub async fn launch(runner: &Path, dir: &Path, id: uuid::Uuid) -> anyhow::Result<()> {
    if let Some(scope) = systemd_scope(id) {
        let mut command = tokio::process::Command::new("systemd-run");
        command.args(scope).arg(runner).arg(SUBCOMMAND).arg(dir);
        match stage_one(command).await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(
                "starting a job in a systemd scope failed ({e:#}); starting it in a session of its own, \
                 so restarting the daemon's service will stop it"
            ),
        }
    }
    let mut command = tokio::process::Command::new(runner);
    command.arg(SUBCOMMAND).arg(dir);
    stage_one(command).await
}

async fn stage_one(mut command: tokio::process::Command) -> anyhow::Result<()> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let output = command.output().await.context("starting the job supervisor")?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    anyhow::bail!("the job supervisor failed ({}): {}", output.status, said.trim())
}

/// `systemd-run` arguments for a transient scope, when this daemon runs as a
/// systemd service (its cgroup is a `.service`, or a leaf of one, and systemd gave it an
/// `INVOCATION_ID`); `None` otherwise.
fn systemd_scope(id: uuid::Uuid) -> Option<Vec<String>> {
    std::env::var_os("INVOCATION_ID")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    // With a delegated cgroup the daemon lives in a leaf below its service.
    let own = own.strip_suffix(&format!("/{}", crate::daemon::contain::LEAF)).unwrap_or(own);
    if !own.ends_with(".service") {
        return None;
    }
    let mut args = vec![];
    if !rustix::process::geteuid().is_root() {
        args.push("--user".to_owned());
    }
    let unit = format!("aic-job-{}", id.simple());
    args.extend(["--scope", "--collect", "--quiet", "--unit", &unit].map(str::to_owned));
    Some(args)
}

/// `aic-daemon job-run [--detached] DIR`: the first stage starts the second
/// and waits for its word; the second supervises the job. The exit code is
/// for the daemon (0: the job's state is on disk).
pub fn main(args: &[String]) -> std::process::ExitCode {
    let result = match args {
        [flag, dir] if flag == DETACHED => supervise(Path::new(dir)),
        [dir] => detach(Path::new(dir)),
        _ => Err(anyhow::anyhow!("usage: aic-daemon {SUBCOMMAND} DIR (started by aic-daemon itself)")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aic-daemon {SUBCOMMAND}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The first stage: starts the second and returns once it said the job's
/// state is written. The second is then nobody's child but init's.
fn detach(dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = std::process::Command::new(exe)
        .arg(SUBCOMMAND)
        .arg(DETACHED)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Not the first stage's: the daemon reads that until it closes.
        .stderr(Stdio::null())
        .spawn()
        .context("starting the detached supervisor")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    anyhow::ensure!(line.trim() == READY, "the detached supervisor ended before its job was started");
    Ok(())
}

/// The second stage: runs the job to its end.
fn supervise(dir: &Path) -> anyhow::Result<()> {
    // A session of its own: no terminal, and the daemon's group is not its group.
    let _ = rustix::process::setsid();
    let job: Record = record::read_json(dir, record::RECORD).context("reading job.json")?;
    let spool = Writer::create(dir, job.cap, job.kind == JobKind::Exec).context("creating the spool")?;
    if dir.join(record::CANCEL).exists() {
        // Cancelled while its supervisor was on its way: it never runs.
        record::write_json(dir, record::END, &End { ended_ms: now_ms(), cancelled: true, ..End::default() })?;
        ready();
        return Ok(());
    }
    // From here the daemon counts this supervisor's group (it leads one
    // since setsid) as the job's: the command's processes are never outside
    // what the control socket refuses, not even before their own group is
    // written below.
    let supervisor = std::process::id() as i32;
    record::write_json(dir, record::PIDS, &Pids { supervisor, group: 0, started_ms: now_ms() })?;
    let started = match Started::spawn(&job) {
        Ok(started) => started,
        Err(e) => {
            let message = format!("the command could not be started: {e}");
            let end = End {
                ended_ms: now_ms(),
                refusal: Some(Refusal::SpawnFailed),
                message: Some(message),
                ..End::default()
            };
            record::write_json(dir, record::END, &end)?;
            ready();
            return Ok(());
        }
    };
    let pids = Pids { supervisor, group: started.group, started_ms: now_ms() };
    record::write_json(dir, record::PIDS, &pids)?;
    ready();
    let end = started.run(dir, &job, spool, pids.started_ms);
    record::write_json(dir, record::END, &end)?;
    Ok(())
}

/// Tells the first stage the job's state is on disk.
fn ready() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
}

/// Output readers: each yields chunks and which stream they came from.
type Reader = (Stream, Box<dyn Read + Send>);

/// A started command.
struct Started {
    group: i32,
    readers: Vec<Reader>,
    wait: Box<dyn FnOnce() -> i32 + Send>,
    /// Kept open until the command ends (the PTY master).
    _keep: Option<Box<dyn Send>>,
}

impl Started {
    fn spawn(job: &Record) -> anyhow::Result<Self> {
        if let Some(cwd) = &job.cwd {
            anyhow::ensure!(Path::new(cwd).is_dir(), "cwd {cwd:?} does not exist on this machine");
        }
        if job.pty { Self::spawn_pty(job) } else { Self::spawn_pipes(job) }
    }

    fn spawn_pipes(job: &Record) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&job.command)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .envs(NON_INTERACTIVE_ENV.iter().copied());
        if let Some(cwd) = &job.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn()?;
        let mut readers: Vec<Reader> = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push((Stream::Stdout, Box::new(out)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push((Stream::Stderr, Box::new(err)));
        }
        let group = child.id() as i32;
        let wait = Box::new(move || child.wait().map_or(-1, exit_code));
        Ok(Self { group, readers, wait, _keep: None })
    }

    fn spawn_pty(job: &Record) -> anyhow::Result<Self> {
        use portable_pty::{CommandBuilder, PtySize, native_pty_system};
        let pair = native_pty_system().openpty(PtySize { rows: 24, cols: 120, pixel_width: 0, pixel_height: 0 })?;
        let mut cmd = CommandBuilder::new("sh");
        cmd.args(["-c", &job.command]);
        for (k, v) in NON_INTERACTIVE_ENV {
            cmd.env(k, v);
        }
        cmd.env("TERM", "xterm-256color");
        match &job.cwd {
            Some(cwd) => cmd.cwd(cwd),
            None => cmd.cwd(std::env::current_dir()?),
        }
        let mut child = pair.slave.spawn_command(cmd)?;
        drop(pair.slave);
        let group = child.process_id().map_or(0, |id| id as i32);
        let reader = pair.master.try_clone_reader()?;
        let wait = Box::new(move || child.wait().map_or(-1, |s| s.exit_code() as i32));
        Ok(Self { group, readers: vec![(Stream::Stdout, reader)], wait, _keep: Some(Box::new(pair.master)) })
    }

    /// Pumps output into the spool until the command ends; its timeout (and
    /// an exec's cap) kill its group.
    fn run(self, dir: &Path, job: &Record, spool: Writer, started_ms: u64) -> End {
        let group = self.group;
        let spool = Arc::new(Mutex::new(spool));
        let timed_out = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        for (stream, reader) in self.readers {
            let (spool, done) = (Arc::clone(&spool), done_tx.clone());
            std::thread::spawn(move || {
                pump(reader, stream, &spool, group);
                let _ = done.send(());
            });
        }
        drop(done_tx);
        let timer = Arc::clone(&timed_out);
        let timeout = Duration::from_millis(job.timeout_ms);
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            timer.store(true, Ordering::SeqCst);
            stop_group(group);
        });
        let exit_code = (self.wait)();
        // Output still in the pipes is read; a process that escaped the group
        // and holds them open is not waited for long.
        while done_rx.recv_timeout(KILL_GRACE).is_ok() {}
        let (truncated, lost) = spool.lock().map(|s| (s.truncated, s.lost.clone())).unwrap_or_default();
        End {
            ended_ms: now_ms(),
            started_ms: Some(started_ms),
            exit_code: Some(exit_code),
            timed_out: timed_out.load(Ordering::SeqCst),
            truncated,
            cancelled: dir.join(record::CANCEL).exists(),
            refusal: None,
            message: lost,
        }
    }
}

/// Copies one stream into the spool; an exec past its cap has its group stopped.
fn pump(mut reader: Box<dyn Read + Send>, stream: Stream, spool: &Mutex<Writer>, group: i32) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(mut spool) = spool.lock() else { return };
        match spool.write(stream, &buf[..n]) {
            Ok(true) => {}
            Ok(false) => {
                drop(spool);
                stop_group(group);
            }
            // A full disk: the job runs on; its output is lost from here, which its end says.
            Err(_) => {}
        }
    }
}

/// SIGTERM to the group, SIGKILL after [`KILL_GRACE`], on a thread of its own.
pub fn stop_group(group: i32) {
    record::signal_group(group, rustix::process::Signal::TERM);
    std::thread::spawn(move || {
        std::thread::sleep(KILL_GRACE);
        record::signal_group(group, rustix::process::Signal::KILL);
    });
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

/// The runner a daemon uses when none is configured: its own binary.
pub fn default_runner() -> Option<PathBuf> {
    std::env::current_exe().ok()
}
