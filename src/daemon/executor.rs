//! Runs one command: `sh -c` in its own process group under a reaper of its
//! own (`contain`), stdin from /dev/null, a non-interactive environment,
//! output streamed in chunks; everything it started is killed on timeout, on
//! the output cap, or when its caller goes.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{contain, spawner};
use crate::protocol::agent::{ExecRequest, ExitStatus, Refusal, Stream};
use crate::protocol::files::{FrameKind, HEADER_LEN, write_header};

/// Between SIGTERM to the group and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// The environment every command gets on top of the daemon's: nothing waits
/// for a person to type.
pub const NON_INTERACTIVE_ENV: &[(&str, &str)] = &[
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("CI", "true"),
    ("TERM", "dumb"),
    ("PAGER", "cat"),
    ("SYSTEMD_PAGER", "cat"),
    ("GIT_TERMINAL_PROMPT", "0"),
];

type Chunk = (Stream, OutputChunk);

/// A chunk of a command's output, read in after room for a frame's header,
/// so that it becomes a binary frame without being copied.
#[derive(Debug)]
pub struct OutputChunk(Vec<u8>);

impl OutputChunk {
    /// Room for a header and `chunk` bytes of output.
    fn room(chunk: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + chunk);
        buf.resize(HEADER_LEN, 0);
        Self(buf)
    }

    /// A chunk holding a copy of `bytes`.
    pub fn copy(bytes: &[u8]) -> Self {
        let mut chunk = Self::room(bytes.len());
        chunk.0.extend_from_slice(bytes);
        chunk
    }

    /// The output bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0[HEADER_LEN..]
    }

    /// Keeps the first `len` output bytes.
    fn truncate(&mut self, len: usize) {
        self.0.truncate(HEADER_LEN + len);
    }

    /// The chunk as a binary frame: its header written in front of the bytes, in place.
    pub fn into_frame(mut self, kind: FrameKind, id: uuid::Uuid, seq: u64) -> Vec<u8> {
        write_header(&mut self.0[..HEADER_LEN], kind, id, seq);
        self.0
    }

    /// The output bytes alone (moved down over the header's room).
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.0.drain(..HEADER_LEN);
        self.0
    }
}

/// What a command's stdout and stderr pipes are enlarged to (from the
/// kernel's 64 KiB): a writer such as `cat` fills more before it sleeps, and
/// the daemon takes a whole large chunk in one read. Refused (a user over its
/// pipe quota), the pipe stays as it was.
const PIPE_SIZE: usize = 1024 * 1024;

/// The relay's credit for a command's output, one permit per chunk (of the
/// request's [`ExecRequest::output_chunk`] bytes): a pipe is
/// read only with a permit in hand, so a caller that stops reading stops the
/// reads and, once the pipe is full, the command's writes. `None`: unpaced.
/// Closed, it paces no more (the command is being cut or cancelled).
pub type Credit = Option<Arc<Semaphore>>;
type ExitFuture = Pin<Box<dyn Future<Output = std::io::Result<i32>> + Send>>;

/// A started process, seen uniformly whether it runs on pipes or a PTY.
struct Running {
    /// Its process group (= its pid).
    pgid: i32,
    /// Output chunks; closed when every writer has closed its end.
    output: mpsc::Receiver<Chunk>,
    /// Resolves to the exit status (128 + N when killed by signal N).
    exit: ExitFuture,
    /// Resolves once every process of the command is gone.
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Where its processes are, for the kill.
    cell: contain::Cell,
    /// Kept alive until the command ends (the PTY master).
    _keep: Option<Box<dyn Send>>,
}

/// What happens to a running command, in order: `Started`, any `Output`,
/// then `Exit`; or only `Refused` when it could not start.
#[derive(Debug)]
pub enum ProcessEvent {
    /// The process runs in group `pgid`.
    Started {
        /// Its process group (= its pid).
        pgid: i32,
    },
    /// A chunk of its output, within the request's cap.
    Output {
        /// Which pipe.
        stream: Stream,
        /// The bytes.
        data: OutputChunk,
    },
    /// It ended.
    Exit(ExitStatus),
    /// It never ran.
    Refused {
        /// Why, for the caller's program.
        reason: Refusal,
        /// What the caller should do, in words.
        message: String,
    },
}

/// Where a command's events go; a send fails once nobody listens.
type Events = mpsc::Sender<ProcessEvent>;

/// Runs `req`, reporting `Started`, `Output` and `Exit` (or `Refused`) on
/// `events`. Cancelling `cancel` kills the command's process group; so does
/// `events` being closed. Its pipes are read within `credit`.
pub async fn run(req: ExecRequest, events: Events, cancel: &CancellationToken, credit: Credit) {
    if let Some(cwd) = &req.cwd
        && !Path::new(cwd).is_dir()
    {
        let message =
            format!("cwd {cwd:?} does not exist on this machine (or is not a directory); pick an existing directory");
        let _ = events.send(ProcessEvent::Refused { reason: Refusal::BadRequest, message }).await;
        return;
    }
    let started = Instant::now();
    let spawned = if req.pty { spawn_pty(&req, credit.clone()) } else { spawn_pipes(&req, credit.clone()).await };
    let running = match spawned {
        Ok(running) => running,
        Err(e) => {
            let message = format!("the command could not be started: {e}");
            let _ = events.send(ProcessEvent::Refused { reason: Refusal::SpawnFailed, message }).await;
            return;
        }
    };
    if events.send(ProcessEvent::Started { pgid: running.pgid }).await.is_err() {
        signal_all(&running.cell, rustix::process::Signal::KILL);
        return;
    }
    let mut exit = supervise(&req, running, &events, cancel, credit.as_deref()).await;
    exit.duration_ms = started.elapsed().as_millis() as u64;
    let _ = events.send(ProcessEvent::Exit(exit)).await;
}

/// Forwards output and enforces the timeout, the cap and cancellation until
/// the process has exited and its output is drained.
async fn supervise(
    req: &ExecRequest,
    mut p: Running,
    events: &Events,
    cancel: &CancellationToken,
    credit: Option<&Semaphore>,
) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms);
    let (mut sent, mut exit) = (0u64, None::<i32>);
    let (mut truncated, mut timed_out, mut eof, mut killed, mut gone) = (false, false, false, false, false);
    // When set, the group has had SIGTERM; SIGKILL follows at this instant.
    let mut kill_at: Option<tokio::time::Instant> = None;
    let term = |kill_at: &mut Option<tokio::time::Instant>, unpace: bool| {
        // What follows is dropped here, or read by nobody: the pipes drain unpaced.
        credit.filter(|_| unpace).inspect(|c| c.close());
        if kill_at.is_none() {
            signal_all(&p.cell, rustix::process::Signal::TERM);
            *kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
        }
    };
    loop {
        tokio::select! {
            chunk = p.output.recv(), if !eof => match chunk {
                None => eof = true,
                Some(_) if truncated => {}
                Some((stream, mut data)) => {
                    let room = req.max_output.saturating_sub(sent);
                    if data.bytes().len() as u64 > room {
                        data.truncate(room as usize);
                        truncated = true;
                        term(&mut kill_at, true);
                    }
                    sent += data.bytes().len() as u64;
                    if !data.bytes().is_empty() && events.send(ProcessEvent::Output { stream, data }).await.is_err() {
                        // The link is gone: nobody will read what follows.
                        term(&mut kill_at, true);
                        cancel.cancel();
                    }
                }
            },
            status = &mut p.exit, if exit.is_none() => exit = Some(status.unwrap_or(-1)),
            () = &mut p.gone, if !gone => gone = true,
            _ = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                term(&mut kill_at, false);
            }
            _ = cancel.cancelled(), if kill_at.is_none() => term(&mut kill_at, true),
            _ = tokio::time::sleep_until(kill_at.unwrap_or(deadline)), if kill_at.is_some() && !killed => {
                signal_all(&p.cell, rustix::process::Signal::KILL);
                killed = true;
            }
        }
        // Output that a process keeps open is not waited for once everything is killed; a command being
        // stopped is not done while anything it started is left, until the grace is over.
        if exit.is_some() && (eof || killed) && (kill_at.is_none() || gone || killed) {
            break;
        }
    }
    ExitStatus { exit_code: exit.unwrap_or(-1), duration_ms: 0, truncated, timed_out }
}

/// Signals the command's process group and what left it (`setsid`, a double
/// fork): all of it is still the command's.
fn signal_all(cell: &contain::Cell, signal: rustix::process::Signal) {
    if signal == rustix::process::Signal::KILL {
        // What left the group, the group, then the reaper.
        cell.kill()
    } else {
        // The cell first: a group's signal may end the reaper, and what is below it is then no longer found by ancestry.
        cell.signal(signal);
        cell.signal_group(signal);
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

async fn spawn_pipes(req: &ExecRequest, credit: Credit) -> std::io::Result<Running> {
    let mut cell = contain::Cell::new(req.id)?;
    let (stdout, stderr, reaper) = match via_spawner(req, &mut cell).await? {
        Some(spawned) => spawned,
        None => {
            let mut cmd = shell(req);
            cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = start(cmd, &mut cell)?;
            child.stdout.iter().for_each(enlarge);
            child.stderr.iter().for_each(enlarge);
            let stdout: Output = Box::new(child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?);
            let stderr: Output = Box::new(child.stderr.take().ok_or_else(|| std::io::Error::other("no stderr"))?);
            (stdout, stderr, Reaper::Child(child))
        }
    };
    let (tx, rx) = mpsc::channel(8);
    let chunk = req.output_chunk();
    tokio::spawn(pump(stdout, Stream::Stdout, tx.clone(), credit.clone(), chunk));
    tokio::spawn(pump(stderr, Stream::Stderr, tx, credit, chunk));
    running(reaper, cell, rx, None)
}

/// A command's output pipe, read by the daemon.
type Output = Box<dyn AsyncRead + Unpin + Send>;

/// Starts the command on pipes through the spawner (no fork of the daemon);
/// `None` when there is no spawner.
async fn via_spawner(req: &ExecRequest, cell: &mut contain::Cell) -> std::io::Result<Option<(Output, Output, Reaper)>> {
    use std::os::fd::AsFd;
    if !spawner::available() {
        return Ok(None);
    }
    let (out_rx, out_tx) = std::io::pipe()?;
    let (err_rx, err_tx) = std::io::pipe()?;
    enlarge(&out_rx);
    enlarge(&err_rx);
    let null = dev_null()?;
    let argv = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&req.command)];
    let order = spawner::Order {
        argv: &argv,
        env: NON_INTERACTIVE_ENV,
        cwd: req.cwd.as_deref().map(Path::new),
        new_group: true,
    };
    let Some(pid) = cell.spawn(&order, [null, out_tx.as_fd(), err_tx.as_fd()]).await.transpose()? else {
        return Ok(None);
    };
    // The command holds the writing ends now; these copies close here.
    drop((out_tx, err_tx));
    let reader = |rx: std::io::PipeReader| -> std::io::Result<Output> {
        Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(rx.into())?))
    };
    match reader(out_rx).and_then(|out| Ok((out, reader(err_rx)?))) {
        Ok((out, err)) => Ok(Some((out, err, Reaper::Spawned(pid)))),
        Err(e) => {
            // Started, but the daemon could not watch it: it must not run on.
            cell.kill();
            Err(e)
        }
    }
}

/// `/dev/null` for reading, opened once (close-on-exec): every spawned
/// command's stdin, which the spawner receives a copy of with each order.
fn dev_null() -> std::io::Result<std::os::fd::BorrowedFd<'static>> {
    use std::os::fd::AsFd;
    static NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(null) = NULL.get() {
        return Ok(null.as_fd());
    }
    let null = std::fs::File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| null).as_fd())
}

/// Raises a command's output pipe to [`PIPE_SIZE`], if the kernel lets it.
fn enlarge(pipe: &impl std::os::fd::AsFd) {
    // EPERM past the user's pipe quota, or a kernel without it: the default size still works.
    let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_SIZE);
}

/// A command's reaper, as the daemon knows it.
enum Reaper {
    /// Forked by the daemon itself (PTY commands, or no spawner): its status is the daemon's to wait for.
    Child(tokio::process::Child),
    /// Forked by the spawner, which reaps it; its pid.
    Spawned(i32),
}

/// `sh -c <command>` with the non-interactive environment, in the request's cwd.
fn shell(req: &ExecRequest) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(&req.command).envs(NON_INTERACTIVE_ENV.iter().copied());
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    cmd
}

/// Spawns `cmd` under the cell's reaper (the containment step, after any
/// other `pre_exec` step `cmd` has).
fn start(mut cmd: tokio::process::Command, cell: &mut contain::Cell) -> std::io::Result<tokio::process::Child> {
    cell.prepare(&mut cmd);
    cmd.spawn()
}

/// A spawned reaper seen as a [`Running`]: the exit code comes from its pipe
/// (or, if it was killed before it could say, from its own status).
fn running(
    reaper: Reaper,
    mut cell: contain::Cell,
    output: mpsc::Receiver<Chunk>,
    keep: Option<Box<dyn Send>>,
) -> std::io::Result<Running> {
    let pgid = match &reaper {
        Reaper::Child(child) => child.id().map(|id| id as i32).unwrap_or(0),
        Reaper::Spawned(pid) => *pid,
    };
    let status = match cell.started(pgid).map(contain::Status::new).transpose() {
        Ok(status) => status,
        Err(e) => {
            // Started, but its exit could not be watched: it must not run on.
            cell.kill();
            return Err(e);
        }
    };
    let (code_tx, code_rx) = oneshot::channel();
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    let mut remove = cell.remover();
    let cgroup = cell.has_cgroup();
    let pidfd = cell.pidfd();
    tokio::spawn(async move {
        let mut code_tx = Some(code_tx);
        if let Some(mut status) = status {
            if let Some(code) = status.exit_code().await {
                let _ = code_tx.take().map(|tx| tx.send(Ok(code)));
            }
            status.gone().await;
        }
        let reaped = match reaper {
            Reaper::Child(mut child) => child.wait().await.map(exit_code),
            // The reaper ignores every signal but SIGKILL, so one that went without saying was killed.
            Reaper::Spawned(_) => {
                // Only a cgroup to remove needs it to be released.
                if let Some(pidfd) = pidfd.filter(|_| cgroup) {
                    contain::released(pidfd, RELEASE_LIMIT).await;
                }
                Ok(128 + libc::SIGKILL)
            }
        };
        let _ = code_tx.map(|tx| tx.send(reaped));
        // The kernel lets go of the cgroup a moment after the reaper's exit
        // (after its last switch); a cgroup still busy then is a later sweep's.
        let until = tokio::time::Instant::now() + RELEASE_LIMIT;
        while !remove() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = gone_tx.send(());
    });
    let exit = Box::pin(async move { code_rx.await.unwrap_or(Ok(-1)) });
    let gone = Box::pin(async move {
        let _ = gone_rx.await;
    });
    Ok(Running { pgid, output, exit, gone, cell, _keep: keep })
}

/// How long a spawner's reaper whose status pipe closed is waited for to
/// exit, so that its cgroup is empty and can be removed; past it, a later
/// sweep removes the cgroup.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<Chunk>,
    credit: Credit,
    chunk: usize,
) {
    // Read into the chunk that is sent: nothing zeroed first, and a large
    // read goes as it is, not copied.
    let mut buf = OutputChunk::room(chunk);
    loop {
        // A closed credit (an error) paces no more.
        if let Some(credit) = &credit
            && let Ok(permit) = credit.acquire().await
        {
            permit.forget();
        }
        let data = match reader.read_buf(&mut buf.0).await {
            Ok(0) | Err(_) => return,
            // A short read (a line, a prompt) goes as a copy of its size, so
            // a queued frame holds what it carries, not a whole chunk's room;
            // the room is read into again.
            Ok(n) if n < chunk / 4 => {
                let small = OutputChunk::copy(buf.bytes());
                buf.truncate(0);
                small
            }
            Ok(_) => std::mem::replace(&mut buf, OutputChunk::room(chunk)),
        };
        if tx.send((stream, data)).await.is_err() {
            return;
        }
    }
}

/// PTY commands stay on the daemon's own fork: the controlling terminal is set up between that fork and exec.
fn spawn_pty(req: &ExecRequest, credit: Credit) -> std::io::Result<Running> {
    use portable_pty::{PtySize, native_pty_system};
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: anyhow::Error| std::io::Error::other(format!("{e:#}"));
    let pair =
        native_pty_system().openpty(PtySize { rows: 24, cols: 120, pixel_width: 0, pixel_height: 0 }).map_err(io)?;
    let name = pair.master.tty_name().ok_or_else(|| std::io::Error::other("the PTY has no name"))?;
    let slave = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(name)?;
    drop(pair.slave);
    let mut cmd = shell(req);
    // A program run under a PTY wants a terminal it can draw on.
    cmd.env("TERM", "xterm-256color").stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave);
    contain::controlling_terminal(&mut cmd);
    let mut cell = contain::Cell::new(req.id)?;
    let child = start(cmd, &mut cell)?;
    // The command holds the only slave ends now (`cmd` is dropped); once it
    // and its descendants close them, reads on the master end and the reader thread stops.
    let mut reader = pair.master.try_clone_reader().map_err(io)?;
    let (tx, rx) = mpsc::channel(8);
    let runtime = tokio::runtime::Handle::current();
    let chunk = req.output_chunk();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; chunk];
        loop {
            if let Some(credit) = &credit
                && let Ok(permit) = runtime.block_on(credit.acquire())
            {
                permit.forget();
            }
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send((Stream::Stdout, OutputChunk::copy(&buf[..n]))).is_err() {
                        return;
                    }
                }
            }
        }
    });
    running(Reaper::Child(child), cell, rx, Some(Box::new(pair.master)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::files::{decode_frame, encode_frame};

    #[test]
    fn a_chunk_becomes_the_same_frame_in_place_and_gives_its_bytes_back_alone() {
        let id = uuid::Uuid::new_v4();
        let mut chunk = OutputChunk::copy(b"\x00\xffoutput, then more");
        chunk.truncate(8);
        assert_eq!(chunk.bytes(), b"\x00\xffoutput");
        let frame = OutputChunk::copy(chunk.bytes()).into_frame(FrameKind::Stderr, id, 41);
        assert_eq!(frame, encode_frame(FrameKind::Stderr, id, 41, b"\x00\xffoutput"));
        assert_eq!(decode_frame(&frame).unwrap().payload, b"\x00\xffoutput");
        assert_eq!(chunk.into_bytes(), b"\x00\xffoutput");
    }

    #[tokio::test]
    async fn a_short_read_is_sent_at_its_size_and_a_long_one_whole() {
        const CHUNK: usize = 256 * 1024;
        let long = vec![b'x'; CHUNK];
        let (tx, mut rx) = mpsc::channel(8);
        pump(&b"a line\n"[..], Stream::Stdout, tx.clone(), None, CHUNK).await;
        pump(&long[..], Stream::Stdout, tx, None, CHUNK).await;
        let (_, short) = rx.recv().await.unwrap();
        assert_eq!(short.bytes(), b"a line\n");
        assert!(short.0.capacity() < 1024, "a queued line holds {} bytes", short.0.capacity());
        let (_, whole) = rx.recv().await.unwrap();
        assert_eq!(whole.bytes(), &long[..]);
    }
}
