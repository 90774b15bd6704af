//! Keeps everything a command starts within reach of its timeout and cancel,
//! even a process that leaves the command's process group (`setsid`, a
//! double fork).
//!
//! Each command starts under a reaper of its own: the forked child becomes a
//! child subreaper, forks once more to run the command, and then only waits.
//! Whatever the command starts, and whatever is orphaned on the way, stays a
//! descendant of the reaper until it ends; the reaper ends after the last of
//! them. It reports the command's exit code on a pipe as soon as the command
//! itself ends, and closes that pipe when it goes.
//!
//! Under systemd with `Delegate=yes`, the daemon also moves itself into a leaf
//! of its delegated cgroup ([`LEAF`]) at start, and each command goes into a
//! cgroup of its own beside it before it runs; the kill is then the kernel's
//! (`cgroup.kill`), which no process of the command can leave. Without a
//! delegated cgroup, the kill walks /proc for the reaper's descendants.
//!
//! [`Cell`] is the one step a spawn needs: make it, give it the command with
//! [`Cell::prepare`], hand the spawned pid to [`Cell::started`].
//!
//! This is the crate's only unsafe code: what runs between fork and exec.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use rustix::process::{Pid, PidfdFlags, Signal};
use uuid::Uuid;

/// The leaf of the delegated cgroup the daemon itself moves into.
pub const LEAF: &str = "daemon";

/// Each command's cgroup is this prefix and the command's id.
const CELL_PREFIX: &str = "cmd-";

/// How often a kill walks again for processes forked while it ran.
const KILL_PASSES: usize = 64;

/// Ancestors walked at most, in case /proc changes under the walk.
const MAX_DEPTH: usize = 4096;

/// The daemon's delegated cgroup directory, once [`init`] found one.
static DELEGATED: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The cgroup names of this daemon's cells not yet dropped: a sweep leaves
/// them, since a new cell's cgroup is empty until its reaper joins it.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// At daemon start: when the daemon runs in a cgroup delegated to it
/// (systemd's `Delegate=yes`), moves the daemon into its [`LEAF`] and
/// returns the delegated directory; commands then get cgroups of their own.
/// Otherwise `None`: commands are contained by their reaper alone.
pub fn init() -> Option<PathBuf> {
    DELEGATED.get_or_init(|| match delegated_dir() {
        None => None,
        Some(dir) => match enter_leaf(&dir) {
            Ok(()) => {
                sweep(&dir);
                tracing::info!(cgroup = %dir.display(), "each command runs in a cgroup of its own");
                Some(dir)
            }
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot use the delegated cgroup; commands are contained by process ancestry only");
                None
            }
        },
    });
    delegated()
}

/// The delegated cgroup directory commands get cgroups in, if any.
pub fn delegated() -> Option<PathBuf> {
    DELEGATED.get().cloned().flatten()
}

/// This process's cgroup directory, when systemd marked it delegated.
fn delegated_dir() -> Option<PathBuf> {
    let path = own_cgroup()?;
    let dir = cgroup2_mount()?.join(path.trim_start_matches('/'));
    let marked = |name: &str| {
        let mut value = [0u8; 8];
        rustix::fs::getxattr(&dir, name, &mut value[..]).is_ok_and(|n| value[..n] == *b"1")
    };
    (path != "/" && (marked("user.delegate") || marked("trusted.delegate"))).then_some(dir)
}

/// This process's path in the unified (v2) hierarchy.
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// Where the unified hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid system).
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2").then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

fn enter_leaf(dir: &Path) -> io::Result<()> {
    let leaf = dir.join(LEAF);
    match std::fs::create_dir(&leaf) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
}

/// Removes the command cgroups that are empty (a busy one stays), but not
/// those of live cells.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(CELL_PREFIX) && !live.contains(&name) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Where one command runs: its reaper and, under a delegated cgroup, a cgroup
/// of its own.
pub struct Cell {
    /// The command's cgroup, when the daemon has a delegated one.
    cgroup: Option<PathBuf>,
    /// That cgroup's `cgroup.procs`, opened before the fork: the child only writes to it.
    procs: Option<OwnedFd>,
    /// The pipe's end the reaper writes the exit code to; the daemon's copy is
    /// closed once the child is spawned.
    status_tx: Option<OwnedFd>,
    /// The end the daemon reads, until [`Cell::started`] takes it.
    status_rx: Option<OwnedFd>,
    /// The reaper's pid (= the command's process group), once spawned.
    reaper: i32,
    /// The reaper's pidfd, once spawned (none on a kernel before 5.3). Once the
    /// reaper is reaped its pid may name another process; this still names
    /// the reaper, so a signal through it cannot reach that other process.
    pidfd: Option<OwnedFd>,
}

impl Cell {
    /// Prepares a cell for command `id` (its cgroup, if the daemon has a
    /// delegated one, and the exit-code pipe).
    pub fn new(id: Uuid) -> io::Result<Self> {
        let (rx, tx) = io::pipe()?;
        let mut cell = Self {
            cgroup: None,
            procs: None,
            status_tx: Some(tx.into()),
            status_rx: Some(rx.into()),
            reaper: 0,
            pidfd: None,
        };
        if let Some(dir) = delegated() {
            sweep(&dir);
            let name = format!("{CELL_PREFIX}{id}");
            let path = dir.join(&name);
            if !LIVE.lock().unwrap_or_else(PoisonError::into_inner).insert(name) {
                // Another cell's: its cgroup and its place in `LIVE` stay its own.
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a command with this id is already running"));
            }
            // Set first: dropped after a failure below, the cell leaves `LIVE` too.
            cell.cgroup = Some(path.clone());
            std::fs::create_dir(&path)?;
            cell.procs = Some(std::fs::OpenOptions::new().write(true).open(path.join("cgroup.procs"))?.into());
        }
        Ok(cell)
    }

    /// Adds the containment step to `cmd`, after any it has: in the forked
    /// child, into the cgroup, then split into the reaper and the command.
    /// Only async-signal-safe calls happen in it.
    pub fn prepare(&self, cmd: &mut tokio::process::Command) {
        let procs = self.procs.as_ref().map(AsRawFd::as_raw_fd);
        let status = self.status_tx.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        // SAFETY: runs in the child between fork and exec, where `enter`
        // makes only raw system calls on descriptors this cell keeps open
        // until `started`.
        unsafe { cmd.pre_exec(move || enter(procs, status)) };
    }

    /// Has the spawner fork this cell's reaper for `order` with `stdio`: the
    /// reaper's pid, or `None` when there is no spawner (then [`Cell::prepare`]).
    /// From then on [`Cell::kill`] reaches the command.
    pub async fn spawn(
        &mut self,
        order: &super::spawner::Order<'_>,
        stdio: [std::os::fd::BorrowedFd<'_>; 3],
    ) -> Option<io::Result<i32>> {
        use std::os::fd::AsFd;
        let status = self.status_tx.as_ref()?.as_fd();
        let fds = super::spawner::Fds { stdio, status, procs: self.procs.as_ref().map(AsFd::as_fd) };
        Some(match super::spawner::spawn(order, &fds).await? {
            Ok(spawned) => {
                (self.reaper, self.pidfd) = (spawned.pid, Some(spawned.pidfd));
                Ok(spawned.pid)
            }
            Err(super::spawner::Failed::NotStarted(e)) => Err(e),
            Err(super::spawner::Failed::Lost(reaper)) => {
                if let Some(reaper) = reaper {
                    (self.reaper, self.pidfd) = (reaper.pid, Some(reaper.pidfd));
                }
                self.kill_lost();
                Err(io::Error::other(
                    "the daemon's spawner ended (or stopped answering and was ended) while starting the command, which was stopped if it had started (it may have run in part); check before retrying",
                ))
            }
        })
    }

    /// Kills a command whose start was lost with the spawner, wherever that
    /// start had got to.
    fn kill_lost(&self) {
        if self.cgroup.is_some() {
            // The reaper first: it may not have joined the cgroup yet, and
            // once dead it starts nothing there after the cgroup's kill.
            self.signal_reaper(Signal::KILL);
        }
        self.kill();
    }

    /// After the spawn, with the reaper's pid: the daemon's copies of the
    /// child's ends are closed, and the status pipe's reading end is returned.
    /// A reaper the daemon forked is not reaped yet, so its pidfd is opened here.
    pub fn started(&mut self, reaper: i32) -> Option<OwnedFd> {
        if self.pidfd.is_none() {
            self.pidfd =
                Pid::from_raw(reaper).and_then(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok());
        }
        self.reaper = reaper;
        self.status_tx = None;
        self.procs = None;
        self.status_rx.take()
    }

    /// Whether the command has a cgroup of its own (to remove once it is empty).
    pub fn has_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    /// Removes the command's cgroup once it is empty: call it when
    /// [`Status::gone`] has resolved and the reaper is reaped.
    /// The remover says whether it is done: false while the cgroup is busy,
    /// as it is for a moment after its last process has exited.
    pub fn remover(&self) -> impl FnMut() -> bool + Send + 'static {
        let cgroup = self.cgroup.clone();
        move || match &cgroup {
            Some(cgroup) => std::fs::remove_dir(cgroup).err().and_then(|e| e.raw_os_error()) != Some(libc::EBUSY),
            None => true,
        }
    }

    /// Sends `signal` to every process of the command but its reaper.
    pub fn signal(&self, signal: Signal) {
        for pid in self.members() {
            send(pid, signal);
        }
    }

    /// Sends `signal` to the command's process group (the reaper's pid), only
    /// while the reaper has not ended: after it, the group is empty and its
    /// number may be another process's.
    pub fn signal_group(&self, signal: Signal) {
        if let Some(pgid) = Pid::from_raw(self.reaper)
            && self.reaper_alive()
        {
            // ESRCH (the group is already gone) is the expected way for this to fail.
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }

    /// Whether the reaper has not exited yet (so its pid is still its own);
    /// without a pidfd, assumed.
    fn reaper_alive(&self) -> bool {
        self.pidfd.as_ref().is_none_or(|fd| {
            let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd on a pidfd this cell owns; no wait.
            unsafe { libc::poll(&mut poll, 1, 0) == 0 }
        })
    }

    /// The reaper's pidfd, for [`released`].
    pub fn pidfd(&self) -> Option<OwnedFd> {
        self.pidfd.as_ref().and_then(|fd| fd.try_clone().ok())
    }

    /// Kills every process of the command, its reaper included, however it
    /// left the command's process group.
    pub fn kill(&self) {
        if let Some(cgroup) = &self.cgroup
            && std::fs::write(cgroup.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        // No cgroup.kill (a kernel before 5.14), or no cgroup: kill by list,
        // again while the list still finds processes forked during the kill.
        for _ in 0..KILL_PASSES {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            members.into_iter().for_each(|pid| send(pid, Signal::KILL));
        }
        self.signal_group(Signal::KILL);
        self.signal_reaper(Signal::KILL);
    }

    /// Signals the reaper itself, through its pidfd when it has one.
    fn signal_reaper(&self, signal: Signal) {
        match &self.pidfd {
            Some(pidfd) => {
                // ESRCH (it has exited) is the expected way for this to fail.
                let _ = rustix::process::pidfd_send_signal(pidfd, signal);
            }
            None => send(self.reaper, signal),
        }
    }

    /// The command's live processes, its reaper left out.
    fn members(&self) -> Vec<i32> {
        match &self.cgroup {
            Some(cgroup) => std::fs::read_to_string(cgroup.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .filter(|&pid| pid != self.reaper)
                .collect(),
            None if self.reaper > 0 && self.reaper_alive() => {
                let found = descendants(self.reaper);
                // Had the reaper ended during the walk, its pid might have named another process's tree.
                if self.reaper_alive() { found } else { Vec::new() }
            }
            None => Vec::new(),
        }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        // Busy (something the command left running): a later sweep removes it.
        if let Some(cgroup) = &self.cgroup {
            let _ = std::fs::remove_dir(cgroup);
            if let Some(name) = cgroup.file_name() {
                LIVE.lock().unwrap_or_else(PoisonError::into_inner).remove(&*name.to_string_lossy());
            }
        }
    }
}

/// Reads the command's exit code from the reaper's pipe, then waits for the
/// pipe to close (the reaper, and so every process of the command, gone).
pub struct Status(tokio::net::unix::pipe::Receiver);

impl Status {
    /// Wraps the reading end [`Cell::started`] returned.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map(Self)
    }

    /// The command's exit code (128 + N when killed by signal N); `None` if
    /// the reaper went without saying (it was killed).
    pub async fn exit_code(&mut self) -> Option<i32> {
        let mut code = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut self.0, &mut code).await.ok()?;
        Some(i32::from_ne_bytes(code))
    }

    /// Resolves once the reaper is gone.
    pub async fn gone(&mut self) {
        let mut rest = [0u8; 16];
        while tokio::io::AsyncReadExt::read(&mut self.0, &mut rest).await.is_ok_and(|n| n > 0) {}
    }
}

/// Resolves once the process of `pidfd` has exited, or after `limit`.
pub async fn released(pidfd: OwnedFd, limit: std::time::Duration) {
    // SAFETY: an `OwnedFd` stays open, the same descriptor, while the `AsyncFd` owns it.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    if let Ok(fd) = registered {
        let _ = tokio::time::timeout(limit, fd.readable()).await;
    }
}

fn send(pid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        // ESRCH (it just ended) is the expected way for this to fail.
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Makes `cmd` lead a session of its own with its stdin (a PTY's slave end)
/// as the controlling terminal. Goes before [`Cell::prepare`].
pub fn controlling_terminal(cmd: &mut tokio::process::Command) {
    // SAFETY: setsid and ioctl are async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// The live (not zombie) processes whose ancestry leads to `root`.
fn descendants(root: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let pids = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|&pid| pid != root && descends(pid, root)).collect()
}

fn descends(pid: i32, root: i32) -> bool {
    let Some((state, mut parent)) = state_and_parent(pid) else { return false };
    if state == 'Z' {
        return false;
    }
    for _ in 0..MAX_DEPTH {
        if parent == root {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        let Some((_, next)) = state_and_parent(parent) else { return false };
        parent = next;
    }
    false
}

fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    Some((fields.next()?.chars().next()?, fields.next()?.parse().ok()?))
}

/// In the forked child: joins the command's cgroup, becomes a subreaper and
/// forks; the new child returns (and execs the command), this one reaps.
///
/// # Safety
/// Only between fork and exec; `procs` and `status` are open descriptors.
unsafe fn enter(procs: Option<RawFd>, status: RawFd) -> io::Result<()> {
    // SAFETY: raw system calls on descriptors the caller keeps open.
    unsafe {
        if let Some(fd) = procs
            && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
        {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => Ok(()),
            command => reap(command, status),
        }
    }
}

/// The reaper: waits for every descendant, writes the command's exit code to
/// `status` when the command ends, and exits after the last of them.
///
/// # Safety
/// Only in the forked child [`enter`] made, or the spawner's reaper.
pub(super) unsafe fn reap(command: libc::pid_t, status: RawFd) -> ! {
    // SAFETY: raw system calls only; nothing allocates or locks.
    unsafe {
        // The group's SIGTERM is for the command; the reaper stays to reap.
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_IGN);
        }
        close_all_but(status);
        // rustix's raw calls set no errno: the spawner's reaper shares the
        // spawner's memory, and so its errno, from here on.
        let status = std::os::fd::BorrowedFd::borrow_raw(status);
        loop {
            match rustix::process::wait(rustix::process::WaitOptions::empty()) {
                Ok(Some((pid, raw))) if pid.as_raw_nonzero().get() == command => {
                    let code = raw.terminating_signal().map_or(raw.exit_status().unwrap_or(-1), |s| 128 + s);
                    let _ = rustix::io::write(status, &code.to_ne_bytes());
                }
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => libc::_exit(0),
            }
        }
    }
}

/// Closes every descriptor but `keep`: the reaper must hold no end of the
/// command's output, or its readers would never see the end.
///
/// # Safety
/// Only in the forked child.
unsafe fn close_all_but(keep: RawFd) {
    // SAFETY: closing descriptors in a child that uses none of them.
    unsafe {
        let below = keep == 0 || libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32) == 0;
        let above = libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32) == 0;
        if !(below && above) {
            // A kernel before 5.9.
            (0..65536).filter(|&fd| fd != keep).for_each(|fd| {
                libc::close(fd);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn read_all(mut r: impl io::Read) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    }

    #[test]
    fn a_sweep_leaves_the_empty_cgroup_of_a_live_cell() {
        let dir = tempfile::tempdir().unwrap();
        let (live, left) = (format!("{CELL_PREFIX}{}", Uuid::new_v4()), format!("{CELL_PREFIX}{}", Uuid::new_v4()));
        for name in [&live, &left] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        LIVE.lock().unwrap().insert(live.clone());
        sweep(dir.path());
        LIVE.lock().unwrap().remove(&live);
        // Removed, it made the reaper's join fail with ENODEV: 32 parallel commands under systemd got 500s.
        assert!(dir.path().join(&live).is_dir(), "a live cell's cgroup stays, empty until its reaper joins");
        assert!(!dir.path().join(&left).exists(), "a command cgroup no cell uses goes");
    }

    #[test]
    fn the_kill_reaches_a_process_that_left_the_group_and_its_parent() {
        use std::os::unix::process::CommandExt as _;
        let mut cell = Cell::new(Uuid::new_v4()).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "setsid sh -c 'sleep 300' & echo $!"]).process_group(0).stdout(std::process::Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        cell.prepare(&mut cmd);
        let mut child = cmd.as_std_mut().spawn().unwrap();
        let rx = cell.started(child.id() as i32).unwrap();
        let mut out = [0u8; 16];
        let n = child.stdout.as_mut().unwrap().read(&mut out).unwrap();
        let detached: i32 = String::from_utf8_lossy(&out[..n]).trim().parse().unwrap();
        let mut code = [0u8; 4];
        std::fs::File::from(rx.try_clone().unwrap()).read_exact(&mut code).unwrap();
        assert_eq!(i32::from_ne_bytes(code), 0, "the command itself ended");
        assert!(cell.members().contains(&detached), "{detached} is still the command's: {:?}", cell.members());
        cell.kill();
        assert!(read_all(std::fs::File::from(rx)).is_empty(), "the pipe closes: the reaper is gone");
        assert!(state_and_parent(detached).is_none_or(|(s, _)| s == 'Z'), "the detached sleep is gone");
        child.wait().unwrap();
    }

    #[test]
    fn once_the_reaper_is_reaped_its_pid_given_to_another_process_is_not_signalled() {
        use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
        let mut cell = Cell::new(Uuid::new_v4()).unwrap();
        let mut cmd = std::process::Command::new("true");
        cmd.process_group(0);
        let mut cmd = tokio::process::Command::from(cmd);
        cell.prepare(&mut cmd);
        let mut child = cmd.as_std_mut().spawn().unwrap();
        let rx = cell.started(child.id() as i32).unwrap();
        assert_eq!(read_all(std::fs::File::from(rx)), 0i32.to_ne_bytes(), "the command ended, then its reaper");
        child.wait().unwrap();
        // The reaper is reaped: the kernel may give its pid to another process, here one leading a group.
        let mut other = std::process::Command::new("sleep").arg("100").process_group(0).spawn().unwrap();
        cell.reaper = other.id() as i32;
        cell.signal(Signal::TERM);
        cell.signal_group(Signal::KILL);
        cell.kill();
        // A SIGKILL sent above would end it first; only this SIGTERM must.
        send(other.id() as i32, Signal::TERM);
        assert_eq!(
            other.wait().unwrap().signal(),
            Some(libc::SIGTERM),
            "the other process got no signal of the cell's"
        );
    }
}
