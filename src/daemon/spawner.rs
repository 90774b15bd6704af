//! Starts each command's reaper from a small single-threaded process instead
//! of from the daemon: a `fork()` of the multi-threaded daemon copies its page
//! tables and costs copy-on-write faults and TLB shootdowns on every core.
//!
//! [`start`] forks the spawner at the very start of `aic-daemon run`, before
//! any thread exists, linked to the daemon by a `SOCK_SEQPACKET` socket pair.
//! For each command the daemon sends one message (a tag, argv, the variables it sets,
//! cwd, whether to lead a process group) with the descriptors (stdin, stdout,
//! stderr, the status pipe's writing end, the cgroup's `cgroup.procs`); the
//! spawner starts the reaper, which does what `contain` does after a fork of
//! the daemon (cgroup, subreaper, process group, stdio, cwd, the command's
//! start and exec, then the reaping), and answers with the tag and the
//! reaper's pid and pidfd, or the errno of what failed. The spawner exits
//! when the daemon goes. Starts are async on the daemon's side: one task
//! reads every answer and hands it to the start that waits for its tag, so
//! no start holds a lock or a worker thread while the spawner works, and
//! orders queue in the socket rather than behind one another's round trips.
//!
//! The spawner has the kernel reap each reaper the moment it exits, so the
//! reaper's pid may name another process from then on. The daemon therefore
//! never signals a reaper by its pid: the answer carries a pidfd of it
//! (`SCM_RIGHTS`), and the daemon signals through `pidfd_send_signal` and
//! sees the exit by polling the pidfd; the command's process group and the
//! /proc walk for the reaper's descendants are used only while the pidfd
//! says the reaper has not exited. Passing the pidfd was chosen over having
//! the spawner signal on the daemon's behalf: a kill then needs no round trip
//! and still works once the spawner is gone.
//!
//! Neither the reaper nor the command's child is a `fork()`: both are clones
//! that share the spawner's memory (see `Request::spawn`), so a command
//! costs no copy of page tables and no copy-on-write faults (like a bare
//! `posix_spawn`); each is still a process of its own, with its own
//! descriptors, signals, process group and cgroup.
//!
//! Without a spawner (it died, or a test runs the daemon in-process),
//! [`spawn`] answers `None` and the caller forks the old way. A spawner that
//! takes longer than [`START_LIMIT`] over a start (stopped with `SIGSTOP` by a
//! command running as the daemon's user, say) is killed and treated as gone,
//! so one stuck process never holds every later command.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, IoSlice, IoSliceMut, Read as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// The most descriptors one message carries: stdin, stdout, stderr, status, `cgroup.procs`.
const MAX_FDS: usize = 5;

/// The largest message the spawner reads, in bytes; Linux refuses an argument
/// over 128 KiB anyway. A larger one is forked the old way.
const MAX_MESSAGE: usize = 160 * 1024;

/// An answer's bytes: the order's tag (u64), the reaper's pid (0 when it
/// did not start) and the errno of what failed (i32s). Each order gets two
/// when its reaper starts: [`CLONED`] with the reaper's pidfd, then errno 0
/// once the command has exec'd (or the errno of what failed).
const ANSWER: usize = 16;

/// The errno field of the answer sent right after the reaper's clone.
const CLONED: i32 = -1;

/// Set in the daemon's environment by a test: the spawner ends right after a
/// command's exec, without answering, as if killed then.
pub const TEST_LOSE_ENV: &str = "AIC_SPAWNER_TEST_LOSE_ORDER";

/// How long a start waits for the spawner to take its order and answer it:
/// a clone takes microseconds, so only a stopped or stuck spawner reaches it.
pub const START_LIMIT: Duration = Duration::from_secs(10);

/// The spawner's process name, as `ps` shows it.
const NAME: &[u8] = b"aic-spawner\0";

/// The daemon's link to its spawner.
static LINK: Mutex<State> = Mutex::new(State::None);

/// Where the daemon's link to its spawner stands.
enum State {
    /// No spawner (none was forked, or it is gone).
    None,
    /// Forked by [`start`], before the runtime: no order sent yet.
    Forked(Link),
    /// Orders go down the socket; a task reads the answers.
    Open(Arc<Conn>),
}

/// The daemon's side of a running spawner, as [`start`] leaves it.
struct Link {
    /// The socket the orders go down and the answers come up.
    socket: OwnedFd,
    /// The spawner's pid, to reap it once it is found gone.
    pid: i32,
}

/// The link once orders flow: each order is tagged and its start waits for
/// the answer with that tag, which one task reads. No start holds a lock or a
/// worker thread while the spawner works, and the spawner finds the next
/// order waiting in its socket as soon as it has answered one.
struct Conn {
    /// The socket, non-blocking.
    socket: AsyncFd<OwnedFd>,
    /// The spawner's pid, to reap it once it is found gone.
    pid: i32,
    /// The orders sent and not yet answered.
    waiting: Mutex<Waiting>,
}

/// The orders a [`Conn`] waits for answers to.
#[derive(Default)]
struct Waiting {
    /// The next order's tag.
    next: u64,
    /// Where each tag's answer goes.
    answers: HashMap<u64, Waiter>,
}

/// A start waiting for its answer.
struct Waiter {
    /// Where the answer goes.
    answer: oneshot::Sender<Result<Spawned, Failed>>,
    /// The reaper, once the spawner has said it cloned it (before the
    /// command's exec): a start lost with the spawner can still be killed.
    reaper: Option<Spawned>,
}

/// Why a start through the spawner failed.
pub enum Failed {
    /// The command did not start: the errno of what failed.
    NotStarted(io::Error),
    /// The spawner ended after it took the order: the command may have
    /// started, under this reaper if the spawner had told it.
    Lost(Option<Spawned>),
}

/// One answer of the spawner.
enum Answer {
    /// The reaper is cloned; its command is not exec'd yet.
    Cloned(Spawned),
    /// The command is exec'd (under the reaper `Cloned` told).
    Started,
    /// The command did not start: the errno of what failed.
    Failed(io::Error),
}

/// What the spawner runs.
pub struct Order<'a> {
    /// The program (looked up in `PATH`) and its arguments.
    pub argv: &'a [&'a OsStr],
    /// Variables set on top of the daemon's environment.
    pub env: &'a [(&'a str, &'a str)],
    /// Where the command starts, if not where the daemon runs.
    pub cwd: Option<&'a Path>,
    /// Whether the reaper leads a process group of its own (the command's).
    pub new_group: bool,
}

/// The descriptors the reaper gets.
pub struct Fds<'a> {
    /// The command's stdin, stdout and stderr.
    pub stdio: [BorrowedFd<'a>; 3],
    /// The status pipe's writing end, kept by the reaper alone.
    pub status: BorrowedFd<'a>,
    /// The command's `cgroup.procs`, which the reaper joins first.
    pub procs: Option<BorrowedFd<'a>>,
}

/// At the very start of `aic-daemon run`, before any thread: forks the
/// spawner. Does nothing when threads already exist (a fork then would not be
/// safe) or the fork fails; commands are then forked by the daemon itself.
pub fn start() {
    if std::fs::read_dir("/proc/self/task").map_or(true, |tasks| tasks.count() != 1) {
        return;
    }
    // The reapers' clones need `CLONE_PIDFD` (Linux 5.2); a kernel without
    // `pidfd_open` (5.3) gets no spawner, and the daemon forks as before.
    // SAFETY: pidfd_open of this process; the descriptor is closed at once.
    match unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) } {
        -1 => return,
        fd => drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) }),
    }
    let flags = SocketFlags::CLOEXEC;
    let Ok((ours, theirs)) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None) else {
        return;
    };
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: this process has one thread (checked above), so the child is a
    // whole copy of it and may allocate; it never returns from `serve`.
    match unsafe { libc::fork() } {
        -1 => {}
        0 => {
            drop(ours);
            serve(theirs, parent)
        }
        pid => {
            drop(theirs);
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(&ours, 2 * MAX_MESSAGE);
            *LINK.lock().unwrap_or_else(PoisonError::into_inner) = State::Forked(Link { socket: ours, pid });
        }
    }
}

/// Whether a spawner is there to ask.
pub fn available() -> bool {
    !matches!(*LINK.lock().unwrap_or_else(PoisonError::into_inner), State::None)
}

/// A reaper the spawner started.
pub struct Spawned {
    /// Its pid (= the command's process group when `new_group`).
    pub pid: i32,
    /// Its pidfd: the spawner has the kernel reap it the moment it exits, after
    /// which `pid` may name another process; this still names the reaper.
    pub pidfd: OwnedFd,
}

/// Has the spawner fork a reaper for `order` with `fds`, or says why it could
/// not start. `None` when there is no spawner: the caller forks the old way.
pub async fn spawn(order: &Order<'_>, fds: &Fds<'_>) -> Option<Result<Spawned, Failed>> {
    let conn = conn()?;
    let (tag, answer) = conn.expect();
    let message = match encode(tag, order, fds.procs.is_some()) {
        Ok(message) if message.len() <= MAX_MESSAGE => message,
        other => {
            conn.forget(tag);
            return other.err().map(|e| Err(Failed::NotStarted(e)));
        }
    };
    let sent = tokio::time::timeout(START_LIMIT, conn.send(&message, fds)).await;
    if let Err(e) = sent.unwrap_or_else(|_| Err(stalled())) {
        // It never took the order: the caller may start the command another way.
        conn.forget(tag);
        conn.gone(&e);
        return None;
    }
    let mut answer = answer;
    let answered = match tokio::time::timeout(START_LIMIT, &mut answer).await {
        Ok(answered) => answered,
        Err(_) => {
            conn.gone(&stalled());
            answer.await
        }
    };
    // Unanswered, it was lost with the spawner (see `Conn::gone`).
    Some(answered.unwrap_or(Err(Failed::Lost(None))))
}

/// The open link, opened on the first order (it needs the runtime).
fn conn() -> Option<Arc<Conn>> {
    let mut link = LINK.lock().unwrap_or_else(PoisonError::into_inner);
    if let State::Forked(_) = &*link {
        let State::Forked(Link { socket, pid }) = std::mem::replace(&mut *link, State::None) else { unreachable!() };
        let _ = rustix::io::ioctl_fionbio(&socket, true);
        // SAFETY: an `OwnedFd` stays open, the same descriptor, while the `AsyncFd` owns it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE) };
        let Ok(socket) = socket else {
            tracing::warn!("cannot watch the spawner's socket; the daemon forks each command itself");
            return None;
        };
        let conn = Arc::new(Conn { socket, pid, waiting: Mutex::default() });
        tokio::spawn(answers(Arc::clone(&conn)));
        *link = State::Open(conn);
    }
    match &*link {
        State::Open(conn) => Some(Arc::clone(conn)),
        _ => None,
    }
}

impl Conn {
    /// A new order's tag, and where its answer will come.
    fn expect(&self) -> (u64, oneshot::Receiver<Result<Spawned, Failed>>) {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let tag = waiting.next;
        waiting.next += 1;
        waiting.answers.insert(tag, Waiter { answer: tx, reaper: None });
        (tag, rx)
    }

    /// Hands the spawner's answer to order `tag` on.
    fn answered(&self, tag: u64, answer: Answer) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match answer {
            Answer::Cloned(reaper) => {
                if let Some(waiter) = waiting.answers.get_mut(&tag) {
                    waiter.reaper = Some(reaper);
                }
                return;
            }
            Answer::Started => waiting.answers.remove(&tag).map(|w| {
                let reaper = w.reaper.ok_or_else(|| Failed::NotStarted(io::Error::from_raw_os_error(libc::EPROTO)));
                (w.answer, reaper)
            }),
            Answer::Failed(e) => waiting.answers.remove(&tag).map(|w| (w.answer, Err(Failed::NotStarted(e)))),
        };
        if let Some((tx, outcome)) = outcome {
            let _ = tx.send(outcome);
        }
    }

    /// Stops waiting for the answer to `tag`.
    fn forget(&self, tag: u64) {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).answers.remove(&tag);
    }

    /// Sends one order with its descriptors, waiting for room in the socket.
    async fn send(&self, message: &[u8], fds: &Fds<'_>) -> io::Result<()> {
        let mut all = fds.stdio.to_vec();
        all.push(fds.status);
        all.extend(fds.procs);
        loop {
            let mut ready = self.socket.writable().await?;
            let sent = ready.try_io(|socket| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                control.push(SendAncillaryMessage::ScmRights(&all));
                let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
                Ok(rustix::net::sendmsg(socket, &[IoSlice::new(message)], &mut control, flags)?)
            });
            if let Ok(sent) = sent {
                return sent.map(drop);
            }
        }
    }

    /// The spawner is gone: from now on the daemon forks each command
    /// itself, and every start still waiting learns its order was lost.
    fn gone(self: &Arc<Self>, error: &io::Error) {
        let mut link = LINK.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*link, State::Open(conn) if Arc::ptr_eq(conn, self)) {
            *link = State::None;
            tracing::warn!(error = %error, "the spawner process is gone; the daemon forks each command itself from now on");
            // Ended already, or stopped or stuck: either way it serves no more.
            // Only this reaps the daemon's own child, so the pid still names it.
            // SAFETY: a signal to that child, then waiting for it.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let pid = self.pid;
            tokio::task::spawn_blocking(move || unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) });
        }
        drop(link);
        // It took these orders and may have started their commands: starting
        // them again the old way could run them twice.
        for (_, waiter) in self.waiting.lock().unwrap_or_else(PoisonError::into_inner).answers.drain() {
            let _ = waiter.answer.send(Err(Failed::Lost(waiter.reaper)));
        }
    }
}

/// Why [`Conn::gone`] is called on a spawner that let a start wait [`START_LIMIT`].
fn stalled() -> io::Error {
    let limit = START_LIMIT.as_secs();
    io::Error::new(io::ErrorKind::TimedOut, format!("it did not answer a start within {limit} s and was killed"))
}

/// The one reader of the spawner's answers: each goes to the start that
/// waits for its tag, until the spawner is gone.
async fn answers(conn: Arc<Conn>) {
    let error = loop {
        match conn.socket.async_io(Interest::READABLE, |socket| answer(socket.as_fd())).await {
            Ok((tag, answer)) => conn.answered(tag, answer),
            Err(e) => break e,
        }
    };
    conn.gone(&error);
}

/// Reads one answer and its tag. An error means the spawner is gone (or,
/// `WouldBlock`, has not answered yet).
fn answer(socket: BorrowedFd) -> io::Result<(u64, Answer)> {
    let mut answer = [0u8; ANSWER];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    let got = rustix::net::recvmsg(socket, &mut [IoSliceMut::new(&mut answer)], &mut control, flags)?.bytes;
    let pidfd = received(&mut control).into_iter().next();
    if got != answer.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the spawner closed its socket"));
    }
    let tag = u64::from_ne_bytes(answer[..8].try_into().unwrap_or_default());
    let pid = i32::from_ne_bytes(answer[8..12].try_into().unwrap_or_default());
    let errno = i32::from_ne_bytes(answer[12..].try_into().unwrap_or_default());
    let answer = match (pid, errno, pidfd) {
        (1.., CLONED, Some(pidfd)) => Answer::Cloned(Spawned { pid, pidfd }),
        (1.., 0, None) => Answer::Started,
        (0, 1.., None) => Answer::Failed(io::Error::from_raw_os_error(errno)),
        _ => Answer::Failed(io::Error::from_raw_os_error(libc::EPROTO)),
    };
    Ok((tag, answer))
}

/// The descriptors a message brought.
fn received(control: &mut RecvAncillaryBuffer) -> Vec<OwnedFd> {
    control
        .drain()
        .filter_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds.collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The message: the tag (8 bytes), then NUL-ended fields, `flags`, argc, cwd (empty for none), the
/// arguments, then `NAME=value` for each variable.
fn encode(tag: u64, order: &Order, procs: bool) -> io::Result<Vec<u8>> {
    let flags = match (order.new_group, procs) {
        (true, true) => "gp",
        (true, false) => "g",
        (false, true) => "p",
        (false, false) => "-",
    };
    let argc = order.argv.len().to_string();
    let cwd = order.cwd.map_or(OsStr::new(""), Path::as_os_str);
    let vars = order.env.iter().map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat());
    let fields = [flags.as_bytes().to_vec(), argc.into_bytes(), cwd.as_bytes().to_vec()].into_iter();
    let fields = fields.chain(order.argv.iter().map(|a| a.as_bytes().to_vec())).chain(vars);
    let mut message = tag.to_ne_bytes().to_vec();
    for field in fields {
        if field.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the command, its cwd or a variable",
            ));
        }
        message.extend_from_slice(&field);
        message.push(0);
    }
    Ok(message)
}

/// A decoded order, ready for the reaper: nothing is allocated after it.
struct Request {
    /// The program's path, found in `PATH`.
    program: CString,
    /// argv, program name first.
    argv: Vec<CString>,
    /// The full environment, `NAME=value`.
    envp: Vec<CString>,
    /// Where to `chdir`.
    cwd: Option<CString>,
    /// Whether the reaper calls `setpgid(0, 0)`.
    new_group: bool,
    /// stdin, stdout, stderr, status and maybe `cgroup.procs`, as received.
    fds: Vec<OwnedFd>,
}

/// The spawner's life: answer orders until the daemon goes.
fn serve(socket: OwnedFd, parent: libc::pid_t) -> ! {
    // SAFETY: plain system calls in this single-threaded process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr());
        // Its reapers share its memory: a core dump of one (a command's
        // `kill -ABRT $PPID`) would, before Linux 5.16, kill every process
        // sharing it. Not dumpable, a fatal signal kills only its target;
        // nor can a command that runs as the same user trace a reaper.
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        // Its reapers are reaped by the kernel; each reaper sets this back.
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        // The reaper dup2s onto 0, 1 and 2: received descriptors must not land there.
        for fd in 0..3 {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
    let base: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let lose = base.iter().any(|(k, _)| k == TEST_LOSE_ENV);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut reapers = Reapers::default();
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let flags = RecvFlags::CMSG_CLOEXEC;
        let got = match rustix::net::recvmsg(&socket, &mut [IoSliceMut::new(&mut buf)], &mut control, flags) {
            Err(Errno::INTR) => continue,
            Ok(got) if got.bytes > 0 => got,
            // The daemon is gone.
            _ => unsafe { libc::_exit(0) },
        };
        let fds = received(&mut control);
        reapers.sweep();
        let message = &buf[..got.bytes.min(buf.len())];
        let (tag, fields) = message.split_at_checked(8).unwrap_or((&[0; 8], &[]));
        let tag = u64::from_ne_bytes(tag.try_into().unwrap_or_default());
        let cloned = |pid, pidfd: BorrowedFd<'_>| reply(&socket, tag, pid, CLONED, Some(pidfd));
        match decode(fields, fds, &base).and_then(|r| r.spawn(&mut reapers, cloned)) {
            // SAFETY: ends this process, as a kill would.
            Ok(_) if lose => unsafe { libc::_exit(0) },
            Ok(pid) => reply(&socket, tag, pid, 0, None),
            Err(e) => reply(&socket, tag, 0, e.raw_os_error().unwrap_or(libc::EINVAL), None),
        }
    }
}

/// Answers order `tag`: the reaper's pid and pidfd, or (pid 0) an errno.
fn reply(socket: &OwnedFd, tag: u64, pid: i32, errno: i32, pidfd: Option<BorrowedFd>) {
    let answer = [&tag.to_ne_bytes()[..], &pid.to_ne_bytes(), &errno.to_ne_bytes()].concat();
    let pidfd: Vec<BorrowedFd> = pidfd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&pidfd));
    let _ = rustix::net::sendmsg(socket, &[IoSlice::new(&answer)], &mut control, SendFlags::NOSIGNAL);
}

/// Reads a message [`encode`] made.
fn decode(message: &[u8], fds: Vec<OwnedFd>, base: &[(OsString, OsString)]) -> io::Result<Request> {
    let bad = || io::Error::from_raw_os_error(libc::EINVAL);
    let mut fields = message.strip_suffix(&[0]).ok_or_else(bad)?.split(|&b| b == 0);
    let flags = fields.next().ok_or_else(bad)?;
    let argc: usize =
        std::str::from_utf8(fields.next().ok_or_else(bad)?).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let cwd = fields.next().ok_or_else(bad)?;
    let cstring = |b: &[u8]| CString::new(b).map_err(|_| bad());
    let argv = fields.by_ref().take(argc).map(cstring).collect::<io::Result<Vec<_>>>()?;
    let set: Vec<&[u8]> = fields.collect();
    let procs = flags.contains(&b'p');
    if argv.len() != argc || argc == 0 || fds.len() != 4 + usize::from(procs) {
        return Err(bad());
    }
    let unset = base.iter().filter(|(k, _)| !set.iter().any(|v| v.split(|&b| b == b'=').next() == Some(k.as_bytes())));
    let mut envp = Vec::with_capacity(base.len() + set.len());
    for (k, v) in unset {
        envp.push(cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
    }
    for v in set {
        envp.push(cstring(v)?);
    }
    let path = base.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    let program = cstring(&find_program(OsStr::from_bytes(argv[0].as_bytes()), path)?)?;
    let cwd = (!cwd.is_empty()).then(|| cstring(cwd)).transpose()?;
    Ok(Request { program, argv, envp, cwd, new_group: flags.contains(&b'g'), fds })
}

/// `name`'s path: as given when it has a slash, else the first in `path`
/// that can be executed.
fn find_program(name: &OsStr, path: Option<OsString>) -> io::Result<Vec<u8>> {
    if name.as_bytes().contains(&b'/') {
        return Ok(name.as_bytes().to_vec());
    }
    let path = path.unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok() && p.is_file())
        .map(|p| p.into_os_string().into_vec())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// Raw pointers and descriptors of a [`Request`], for the reaper and the
/// command's child, which run in the spawner's memory.
struct Plan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    new_group: bool,
    stdio: [RawFd; 3],
    status: RawFd,
    procs: RawFd,
    /// Where a child writes the errno of what failed; closed by the exec.
    error: RawFd,
    /// The top of the stack the command's child runs on until its exec.
    command_stack: *mut libc::c_void,
}

/// The stack of one reaper (upper half) and of its command's child until
/// the exec (lower half), below a guard page: the reaper shares the
/// spawner's memory, so it cannot use the spawner's stack.
struct Stack {
    /// The mapping's start (the guard page).
    base: *mut libc::c_void,
}

impl Stack {
    /// The bytes of each half; the reaper and the child use a few hundred.
    const HALF: usize = 32 * 1024;
    /// The guard page's bytes, below both halves.
    const GUARD: usize = 4096;
    const LEN: usize = Self::GUARD + 2 * Self::HALF;

    fn new() -> io::Result<Self> {
        let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
        // SAFETY: a fresh anonymous mapping, owned by the returned value.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), Self::LEN, prot, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base };
        // SAFETY: the first page of the mapping just made.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The top of the reaper's half (stacks grow down).
    fn reaper_top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(Self::LEN)
    }

    /// The top of the command child's half.
    fn command_top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(Self::GUARD + Self::HALF)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made; no process runs on it any more.
        unsafe { libc::munmap(self.base, Self::LEN) };
    }
}

/// The reapers alive, each with the stack it runs on; the stacks of those
/// that ended are kept for the next ones (no new mapping, no page faults).
#[derive(Default)]
struct Reapers {
    /// Each live reaper's pidfd (readable once it has exited) and stack.
    live: Vec<(OwnedFd, Stack)>,
    /// Stacks no process runs on.
    free: Vec<Stack>,
}

impl Reapers {
    /// Stacks kept for reuse at most; more are unmapped.
    const KEEP: usize = 64;

    /// Moves the stacks of the reapers that exited to `free`.
    fn sweep(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            let mut poll = [libc::pollfd { fd: self.live[i].0.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: one pollfd on a pidfd this list owns; no wait.
            if unsafe { libc::poll(poll.as_mut_ptr(), 1, 0) } == 1 {
                let (_, stack) = self.live.swap_remove(i);
                if self.free.len() < Self::KEEP {
                    self.free.push(stack);
                }
            } else {
                i += 1;
            }
        }
    }

    fn stack(&mut self) -> io::Result<Stack> {
        self.free.pop().map_or_else(Stack::new, Ok)
    }
}

impl Request {
    /// Starts the reaper; returns its pid once the command has been exec'd,
    /// or the errno of the step that failed.
    ///
    /// Neither start copies the spawner's memory (what `posix_spawn` does for
    /// the command): the reaper is a process of its own that shares the
    /// spawner's memory (`CLONE_VM`) and runs on a stack of its own; it makes
    /// raw system calls only, and reads the request only until the command's
    /// exec, while the spawner waits for that on the error pipe. The command's
    /// child shares it too, the reaper suspended (`CLONE_VFORK`) until it execs.
    /// `cloned` is told the reaper's pid and pidfd as soon as it is cloned.
    fn spawn(self, reapers: &mut Reapers, cloned: impl FnOnce(i32, BorrowedFd)) -> io::Result<i32> {
        let (error_rx, error_tx) = io::pipe()?;
        let stack = reapers.stack()?;
        let argv: Vec<_> = self.argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let envp: Vec<_> = self.envp.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let raw = |i: usize| self.fds.get(i).map_or(-1, AsRawFd::as_raw_fd);
        let plan = Plan {
            program: self.program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: self.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            new_group: self.new_group,
            stdio: [raw(0), raw(1), raw(2)],
            status: raw(3),
            procs: raw(4),
            error: error_tx.as_raw_fd(),
            command_stack: stack.command_top(),
        };
        let mut pidfd: libc::c_int = -1;
        let flags = libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD;
        let arg = (&raw const plan).cast_mut().cast();
        // SAFETY: `reaper` runs on its own stack and only reads `plan` (and
        // what it points to), which lives until the error pipe's EOF below.
        let pid = unsafe { libc::clone(reaper, stack.reaper_top(), flags, arg, &raw mut pidfd) };
        if pid == -1 {
            reapers.free.push(stack);
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel made this pidfd for the new reaper; it is ours alone.
        let pidfd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(pidfd) };
        cloned(pid, pidfd.as_fd());
        reapers.live.push((pidfd, stack));
        drop(error_tx);
        let mut errno = Vec::new();
        // EOF: the command has exec'd (or failed) and the reaper closed its copy: `plan` is no longer read.
        if (&error_rx).read_to_end(&mut errno).is_err() {
            // The reaper may still read `plan`, which returning would free.
            std::process::abort();
        }
        match errno.get(..4) {
            None => Ok(pid),
            Some(code) => Err(io::Error::from_raw_os_error(i32::from_ne_bytes(code.try_into().unwrap_or_default()))),
        }
    }
}

/// Writes errno to `error` and exits.
///
/// # Safety
/// Only in the reaper or the command's child, before the command's exec.
unsafe fn fail(error: RawFd) -> ! {
    // SAFETY: raw system calls.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(error, errno.to_ne_bytes().as_ptr().cast(), 4);
        libc::_exit(127)
    }
}

/// The reaper: into the cgroup, subreaper, process group, cwd, stdio; then
/// starts the command and reaps until the last of its processes is gone.
///
/// Runs with the spawner's memory, on a stack of its own, with `plan` a
/// [`Plan`] the spawner keeps until the error pipe closes.
extern "C" fn reaper(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: raw system calls only; nothing allocates or locks. The spawner
    // is blocked on the error pipe until `reap` has closed it, so the errno
    // this shares with it is read by nobody else until then.
    unsafe {
        let p = &*plan.cast_const().cast::<Plan>();
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        if p.procs >= 0 && libc::write(p.procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(p.error)
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0
            || (p.new_group && libc::setpgid(0, 0) != 0)
            || (!p.cwd.is_null() && libc::chdir(p.cwd) != 0)
        {
            fail(p.error)
        }
        for (target, &fd) in p.stdio.iter().enumerate() {
            if libc::dup2(fd, target as RawFd) == -1 {
                fail(p.error)
            }
        }
        // Back once the command has exec'd (or failed): only then is the stack's lower half free again.
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
        match libc::clone(command, p.command_stack, flags, plan) {
            -1 => fail(p.error),
            command => super::contain::reap(command, p.status),
        }
    }
}

/// The command's child of the reaper: execs the program.
///
/// Runs with the spawner's memory while the reaper waits for its exec.
extern "C" fn command(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: raw system calls only; nothing allocates or locks.
    unsafe {
        let p = &*plan.cast_const().cast::<Plan>();
        // Whatever the daemon inherited without close-on-exec stays out of the command.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
        libc::execve(p.program, p.argv, p.envp);
        fail(p.error)
    }
}
