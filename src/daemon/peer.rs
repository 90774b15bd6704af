//! Whether a control-socket client is one of the commands this daemon runs,
//! or a process one of them started. Such a client may watch, but not act as
//! the operator: an approved command must not approve the next one, switch
//! supervision off, or reset the code.
//!
//! Three signs, any of which is enough:
//! - it, or a process it descends from, is in the process group of a command
//!   running now (each command leads a group of its own);
//! - it shares this daemon's session, when the daemon leads one (under
//!   systemd it does; in a terminal, the console shares the terminal's);
//! - it is in this daemon's cgroup or below it, when that cgroup is a systemd
//!   service (a terminal's console lives in the user's session scope);
//! - it is in the systemd scope of a job this daemon started
//!   (`aic-job-….scope`), where a job's processes and whatever they detach live.
//!
//! A command that detached itself with `setsid` and a double fork is still a
//! descendant of its reaper (see `contain`), which leads the command's group.

// For SO_PEERPIDFD and poll, which rustix does not offer.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rustix::process::getpid;

/// Ancestors walked at most, in case /proc changes under the walk.
const MAX_DEPTH: usize = 4096;

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd for the process that connected.
/// Its number differs on SPARC, where it is not asked for.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERPIDFD: libc::c_int = 77;

/// A control-socket client's process as it connected: its pid, and whether
/// that pid still names it. Everything read about the client goes through
/// /proc by pid, and a pid is given again once its process is gone, so a
/// client that connects and exits (leaving the socket to a child) could be
/// checked as whatever process takes its pid next.
#[derive(Debug)]
pub struct Peer {
    /// The pid `SO_PEERCRED` gave at connect (0 when unknown).
    pub pid: i32,
    /// How to tell that the process behind `pid` is still the one that connected.
    watch: Watch,
}

#[derive(Debug)]
enum Watch {
    /// A pidfd for it: readable once it exits.
    Pidfd(OwnedFd),
    /// It exited before the daemon could hold on to it.
    Gone,
    /// The kernel has no `SO_PEERPIDFD` (before 6.5): the pid is trusted as before.
    Unknown,
}

impl Peer {
    /// The process that connected `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> Self {
        let pid = stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0);
        Self { pid, watch: pidfd_of_peer(stream.as_raw_fd()) }
    }

    /// Whether the process that connected has not exited, so what /proc
    /// said about `pid` until now was said about it; assumed on kernels
    /// without `SO_PEERPIDFD`.
    pub fn still_there(&self) -> bool {
        match &self.watch {
            Watch::Pidfd(fd) => {
                let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one pollfd on a pidfd this peer owns; no wait.
                unsafe { libc::poll(&mut poll, 1, 0) == 0 }
            }
            Watch::Gone => false,
            Watch::Unknown => true,
        }
    }
}

#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
fn pidfd_of_peer(socket: libc::c_int) -> Watch {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_PEERPIDFD writes one int, a new descriptor this peer then owns.
    let got = unsafe { libc::getsockopt(socket, libc::SOL_SOCKET, SO_PEERPIDFD, (&raw mut pidfd).cast(), &mut len) };
    match std::io::Error::last_os_error().raw_os_error() {
        // SAFETY: a descriptor the kernel just made for this call, owned by no one else.
        _ if got == 0 && pidfd >= 0 => Watch::Pidfd(unsafe { OwnedFd::from_raw_fd(pidfd) }),
        Some(libc::ENOPROTOOPT) => Watch::Unknown,
        _ => Watch::Gone,
    }
}

#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
fn pidfd_of_peer(_: libc::c_int) -> Watch {
    Watch::Unknown
}

/// Why the client `peer` counts as a command of this daemon, or `None`.
/// `command_groups` are the process groups of the commands running now. A
/// client whose process exited is refused, even if its pid now names another.
pub fn command_origin(peer: &Peer, command_groups: &[i32]) -> Option<String> {
    let why = origin_of_pid(peer.pid, command_groups);
    // Asked after every /proc read: still there, those reads were about it.
    match why {
        None if !peer.still_there() => Some(format!(
            "process {} exited after it connected, so the daemon cannot tell who holds its connection",
            peer.pid
        )),
        why => why,
    }
}

/// Why process `peer` counts as a command of this daemon, or `None`.
fn origin_of_pid(peer: i32, command_groups: &[i32]) -> Option<String> {
    let me = getpid().as_raw_nonzero().get();
    if peer == me {
        return None;
    }
    // A process that is gone (it connected, then exited) or outside this
    // PID namespace cannot be checked: it is not taken for the operator.
    if stat(peer).is_none() {
        return Some(format!("process {peer} could not be checked (it exited, or runs in another PID namespace)"));
    }
    if let Some(group) = command_ancestor(peer, command_groups) {
        return Some(format!("process {peer} was started by a command this daemon runs (process group {group})"));
    }
    if leads_own_session(me) && same_session(peer, me) {
        return Some(format!("process {peer} runs in this daemon's session"));
    }
    let own = cgroup(me)?;
    let theirs = cgroup(peer);
    if let Some(scope) = theirs.as_deref().and_then(job_scope) {
        return Some(format!("process {peer} runs in the scope of a job this daemon started ({scope})"));
    }
    // With a delegated cgroup the daemon lives in a leaf of its service's
    // cgroup, and each command in a cgroup beside it.
    let service = own.strip_suffix(&format!("/{}", super::contain::LEAF)).unwrap_or(&own);
    let inside = |path: &str| path == service || path.strip_prefix(service).is_some_and(|rest| rest.starts_with('/'));
    (service.ends_with(".service") && theirs.is_some_and(|path| inside(&path)))
        .then(|| format!("process {peer} runs in this daemon's service ({service})"))
}

/// Whether process `peer` is a descendant of this daemon (everything a
/// command starts is, while its reaper lives; a console run from the
/// operator's terminal is not).
pub fn descends_from_this_daemon(peer: i32) -> bool {
    let me = getpid().as_raw_nonzero().get();
    lineage(peer).any(|(parent, _)| parent == me)
}

/// The `ppid`, `pgrp` and `session` of `pid`, from /proc (0 for a process
/// outside this PID namespace, such as one entered with nsenter).
fn stat(pid: i32) -> Option<(i32, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses: state ppid pgrp session ...
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(1).map(|f| f.parse().ok());
    Some((fields.next()??, fields.next()??, fields.next()??))
}

fn parent_and_group(pid: i32) -> Option<(i32, i32)> {
    stat(pid).map(|(parent, group, _)| (parent, group))
}

/// The command group that `pid`, or one of its ancestors, is in.
fn command_ancestor(pid: i32, command_groups: &[i32]) -> Option<i32> {
    lineage(pid).find_map(|(_, group)| command_groups.contains(&group).then_some(group))
}

/// The parent and group of `pid`, then of each of its ancestors below init.
fn lineage(pid: i32) -> impl Iterator<Item = (i32, i32)> {
    let mut next = Some(pid);
    std::iter::from_fn(move || {
        let (parent, group) = parent_and_group(next?)?;
        next = (parent > 1).then_some(parent);
        Some((parent, group))
    })
    .take(MAX_DEPTH)
}

fn leads_own_session(me: i32) -> bool {
    stat(me).is_some_and(|(_, _, session)| session == me)
}

fn same_session(peer: i32, me: i32) -> bool {
    stat(peer).is_some_and(|(_, _, session)| session == me)
}

/// The job scope a cgroup path ends in (`aic-job-<id>.scope`), if any.
fn job_scope(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    (last.starts_with("aic-job-") && last.ends_with(".scope")).then_some(last)
}

/// The cgroup `pid` is in: the unified hierarchy's path, else systemd's named one.
fn cgroup(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_owned);
    path("0::").filter(|p| p != "/").or_else(|| path("1:name=systemd:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_scope_is_told_from_other_cgroups() {
        assert_eq!(job_scope("/system.slice/aic-job-1f2e.scope"), Some("aic-job-1f2e.scope"));
        assert_eq!(job_scope("/system.slice/aic-daemon.service"), None);
        assert_eq!(job_scope("/user.slice/session-3.scope"), None);
    }

    #[test]
    fn this_process_and_processes_outside_command_groups_are_not_commands() {
        let me = getpid().as_raw_nonzero().get();
        assert_eq!(origin_of_pid(me, &[]), None);
        // Killed below; long enough to outlast the checks on a slow machine.
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        assert_eq!(command_ancestor(child.id() as i32, &[]), None);
        assert!(descends_from_this_daemon(child.id() as i32));
        assert!(!descends_from_this_daemon(me) && !descends_from_this_daemon(1));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_command_and_its_descendants_are_even_in_a_group_of_their_own() {
        use std::os::unix::process::CommandExt;
        let mut child =
            std::process::Command::new("sh").args(["-c", "setsid sleep 60 & wait"]).process_group(0).spawn().unwrap();
        let root = child.id() as i32;
        assert_eq!(command_ancestor(root, &[root]), Some(root));
        let detached = wait_for_child_of(root);
        assert_eq!(command_ancestor(detached, &[root]), Some(root), "setsid left its group, not its parent");
        assert!(origin_of_pid(detached, &[root]).unwrap().contains(&format!("process group {root}")));
        assert_eq!(command_ancestor(detached, &[]), None);
        let group = rustix::process::Pid::from_raw(root).unwrap();
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(detached).unwrap(),
            rustix::process::Signal::KILL,
        );
        child.wait().unwrap();
    }

    fn wait_for_child_of(parent: i32) -> i32 {
        // Bounded by the clock: each look reads all of /proc, slower on a loaded machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
                (parent_and_group(pid)?.0 == parent).then_some(pid)
            });
            if let Some(pid) = found {
                return pid;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{parent} started no child");
    }
}
