//! The control socket: consoles connect here to watch traffic, answer the
//! approval queue and manage the machine. Access is by file mode and by the
//! peer's credentials (root, the daemon's own user, or group `aic`).

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use tokio_util::sync::CancellationToken;

use super::commands::Commands;
use super::peer::Peer;
use super::shared::Daemon;
use crate::protocol::agent::{OperatorOp, OperatorOutcome};
use crate::protocol::control::{
    AccountChanged, CodeInfo, Decided, Decision, Event, LinkState, MAX_LINE, ModeInfo, Op, Reply, Request, ServerFrame,
    Subscribed,
};

/// The group whose members may use a root daemon's socket.
pub const GROUP: &str = "aic";

/// Frames queued for one console before its requests wait for it to read.
const CLIENT_QUEUE: usize = 256;

/// How long an operator action waits for the commands being started to say
/// which process groups they lead (normally well under a millisecond).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A bound control socket; the file is removed when this is dropped.
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
    access: Access,
}

/// Who may talk to the daemon.
#[derive(Debug, Clone, Copy)]
struct Access {
    /// The daemon's own user.
    uid: u32,
    /// Group `aic`, if it exists.
    group: Option<u32>,
}

impl ControlSocket {
    /// Binds `path`, after removing a socket left over by a daemon that died;
    /// refuses if a live daemon answers there.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        let is_root = rustix::process::geteuid().is_root();
        let group = if is_root { group_id(GROUP) } else { None };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            prepare_dir(dir, group)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                bail!("{} exists and is not a socket; remove it or pass another --socket", path.display())
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another aic-daemon is already running on {}; stop it first (systemctl stop aic-daemon) or pass another --socket",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!("removing the stale socket {}", path.display());
                    std::fs::remove_file(path).with_context(|| format!("removing the stale {}", path.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
        // Root shares the socket with group `aic`; anyone else keeps it to themselves.
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        if let Some(gid) = group {
            rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))
                .with_context(|| format!("giving {} to group {GROUP}", path.display()))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let uid = rustix::process::geteuid().as_raw();
        Ok(Self { path: path.to_path_buf(), listener, access: Access { uid, group } })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the socket's directory if missing: 0750 with group `aic` for
/// root, 0700 otherwise. An existing directory must be a real directory
/// owned by this user (or root) that nobody else can write to, or someone
/// could swap the socket for their own. Root gives group `aic` the one it
/// made, and the system socket's, which systemd makes (`RuntimeDirectory=`)
/// as root's alone; never another existing directory (`--socket /run/x.sock`
/// must not open up /run).
fn prepare_dir(dir: &Path, group: Option<u32>) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let system_dir = Path::new(crate::protocol::control::SYSTEM_SOCKET).parent();
    let mut ours = system_dir == Some(dir);
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            let me = rustix::process::geteuid().as_raw();
            if !meta.is_dir() || (meta.uid() != me && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
                bail!(
                    "{} must be a directory owned by you (or root) that others cannot write to; pick another place with --socket",
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mode = if group.is_some() { 0o750 } else { 0o700 };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            ours = true;
        }
        Err(e) => return Err(e).with_context(|| format!("checking {}", dir.display())),
    }
    if let Some(gid) = group.filter(|_| ours) {
        rustix::fs::chown(dir, None, Some(rustix::fs::Gid::from_raw(gid)))
            .with_context(|| format!("giving {} to group {GROUP}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    Ok(())
}

/// The id of group `name`, from /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.nth(1)?.parse().ok()).flatten()
    })
}

/// The supplementary groups of process `pid`.
fn groups_of(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

impl Access {
    fn check(&self, stream: &UnixStream, peer: &Peer) -> Result<(), String> {
        let cred = stream.peer_cred().map_err(|e| format!("could not read the client's credentials: {e}"))?;
        let uid = cred.uid();
        if uid == 0 || uid == self.uid {
            return Ok(());
        }
        if let Some(gid) = self.group
            && (cred.gid() == gid || (groups_of(peer.pid).contains(&gid) && peer.still_there()))
        {
            return Ok(());
        }
        Err(format!(
            "permission denied: uid {uid} may not use this daemon; run the console as root (sudo aic-console …) or join group {GROUP} (sudo usermod -aG {GROUP} $USER, then log in again)"
        ))
    }
}

/// Accepts consoles until `shutdown`; then the socket file is removed.
pub async fn serve(socket: ControlSocket, daemon: Daemon, commands: Commands, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = socket.listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(client(daemon.clone(), commands.clone(), stream, socket.access, shutdown.clone()));
            }
            Err(e) => {
                // Out of file descriptors, say: wait a moment rather than spin.
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client(daemon: Daemon, commands: Commands, stream: UnixStream, access: Access, shutdown: CancellationToken) {
    // The client's process, checked at each operator action (not once now:
    // a command's process group is known only once it has started).
    let peer = Peer::of(&stream);
    if let Err(message) = access.check(&stream, &peer) {
        tracing::warn!("control socket: {message}");
        let mut stream = stream;
        let _ = stream.write_all(&line(&ServerFrame::Error { id: None, message })).await;
        return;
    }
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(CLIENT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write.write_all(&line(&frame)).await.is_err() {
                return;
            }
        }
    });
    let codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_LINE);
    let mut lines = FramedRead::new(read, codec);
    let mut forwarder: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = lines.next() => next,
        };
        let bytes = match next {
            None | Some(Err(AnyDelimiterCodecError::Io(_))) => break,
            Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                let message = format!("request line longer than {} KiB; closing this connection", MAX_LINE / 1024);
                let _ = tx.send(ServerFrame::Error { id: None, message }).await;
                break;
            }
            Some(Ok(bytes)) => bytes,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let frame = answer(&daemon, &commands, &bytes, &peer, &mut forwarder, &tx).await;
        if tx.send(frame).await.is_err() {
            break;
        }
    }
    if let Some(forwarder) = forwarder {
        forwarder.abort();
    }
    drop(tx);
    let _ = writer.await;
}

/// The frame that answers one request line; a `subscribe` starts this
/// connection's event forwarder (once). Operator actions from process `peer`
/// are refused when it is a command the daemon runs, or one it started.
async fn answer(
    daemon: &Daemon,
    commands: &Commands,
    bytes: &[u8],
    peer: &Peer,
    forwarder: &mut Option<tokio::task::JoinHandle<()>>,
    tx: &mpsc::Sender<ServerFrame>,
) -> ServerFrame {
    let Request { id, op } = match serde_json::from_slice::<Request>(bytes) {
        Ok(request) => request,
        Err(e) => {
            let message = format!("unreadable request ({e}); see docs/control-protocol.md");
            return ServerFrame::Error { id: request_id(bytes), message };
        }
    };
    // A command whose start has not settled yet may be the client; one that
    // hangs (a cwd on a dead network mount) must not lock the operator out,
    // so after the limit only this daemon's descendants are refused.
    if op.is_operator_action()
        && !commands.starts_settled(SETTLE_LIMIT).await
        && super::peer::descends_from_this_daemon(peer.pid)
    {
        let message = format!(
            "refused: process {} descends from this daemon, and a command is still starting, so the daemon \
             cannot yet tell whether it is that command; try again in a moment",
            peer.pid
        );
        return ServerFrame::Error { id: Some(id), message };
    }
    let from_command = || super::peer::command_origin(peer, &commands.process_groups());
    if let Some(why) = op.is_operator_action().then(from_command).flatten() {
        tracing::warn!("control socket: refused an operator action from a command this daemon runs: {why}");
        let message = format!(
            "refused: {why}. A command run through aic (or anything it starts) may watch this daemon, but mode \
             changes, approvals, account changes and code resets must come from the operator's own terminal"
        );
        return ServerFrame::Error { id: Some(id), message };
    }
    if op == Op::Subscribe && forwarder.is_none() {
        *forwarder = Some(tokio::spawn(forward(daemon.subscribe(), tx.clone())));
    }
    match handle(daemon, commands, op).await {
        Ok(reply) => ServerFrame::Reply { id, result: serde_json::to_value(&reply).unwrap_or(Value::Null) },
        Err(message) => ServerFrame::Error { id: Some(id), message },
    }
}

fn line(frame: &ServerFrame) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(frame).expect("frames always serialize");
    bytes.push(b'\n');
    bytes
}

/// The `id` of a request that did not parse as a whole, so its error can still be matched.
fn request_id(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(bytes).ok()?.get("id")?.as_u64()
}

/// Pushes events to one console. A console that reads too slowly is told
/// how many it missed instead of holding memory for them.
async fn forward(mut events: broadcast::Receiver<Event>, tx: mpsc::Sender<ServerFrame>) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(ServerFrame::Event(event)).await.is_err() {
            return;
        }
    }
}

async fn handle(daemon: &Daemon, commands: &Commands, op: Op) -> Result<Reply, String> {
    Ok(match op {
        Op::Status => {
            let (pending, running) = commands.counts();
            Reply::Status(daemon.status_info(pending, running))
        }
        Op::Traffic => Reply::Traffic(commands.traffic()),
        Op::Approvals => Reply::Approvals(commands.approvals()),
        Op::Approve { command } => decide(commands, command, Decision::Approved)?,
        Op::Deny { command } => decide(commands, command, Decision::Denied)?,
        Op::SetMode { mode } => {
            daemon.set_mode(mode).map_err(|e| format!("{e:#}"))?;
            Reply::Mode(ModeInfo { mode })
        }
        Op::Code => Reply::Code(daemon.code_info()),
        Op::CodeReset => match daemon.operator(OperatorOp::ResetCode).await? {
            OperatorOutcome::CodeReset { code, .. } => Reply::Code(CodeInfo { code: Some(code.to_string()) }),
            other => return Err(format!("unexpected answer from the relay: {other:?}")),
        },
        Op::Admins => match daemon.operator(OperatorOp::ListAccounts).await? {
            OperatorOutcome::Accounts { accounts } => Reply::Accounts(accounts),
            other => return Err(format!("unexpected answer from the relay: {other:?}")),
        },
        Op::AdminBlock { account } => {
            account_op(daemon, OperatorOp::Block { link: account.clone() }, account, LinkState::Blocked).await?
        }
        Op::AdminUnblock { account } => {
            account_op(daemon, OperatorOp::Unblock { link: account.clone() }, account, LinkState::Active).await?
        }
        Op::AdminApprove { account } => {
            account_op(daemon, OperatorOp::Approve { link: account.clone() }, account, LinkState::Active).await?
        }
        // Answered where the connection is, which is what subscribes.
        Op::Subscribe => Reply::Subscribed(Subscribed { subscribed: true }),
        Op::Jobs => Reply::Jobs(commands.jobs().list(None)),
        Op::JobCancel { job } => {
            let jobs = commands.jobs();
            let record = jobs.record(job, None).ok_or_else(|| format!("no job {job} on this machine"))?;
            jobs.cancel(job);
            Reply::Job(jobs.info(&record))
        }
        Op::JobTail { job } => {
            let tail = commands.jobs().tail(job).ok_or_else(|| format!("no job {job} on this machine"))?;
            Reply::JobTail(crate::protocol::control::JobTail { job, tail })
        }
    })
}

fn decide(commands: &Commands, command: uuid::Uuid, decision: Decision) -> Result<Reply, String> {
    commands.decide(command, decision == Decision::Approved)?;
    Ok(Reply::Decided(Decided { command, decision }))
}

async fn account_op(daemon: &Daemon, op: OperatorOp, account: String, state: LinkState) -> Result<Reply, String> {
    daemon.operator(op).await?;
    daemon.accounts_changed();
    Ok(Reply::Account(AccountChanged { account, state }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::control::Mode;

    #[tokio::test]
    async fn a_subscriber_that_stops_reading_is_told_it_lagged() {
        let (events, rx) = broadcast::channel(4);
        let (tx, mut frames) = mpsc::channel(1);
        let task = tokio::spawn(forward(rx, tx));
        // The subscriber reads nothing while far more events than fit are sent.
        for _ in 0..100 {
            events.send(Event::ModeChanged { mode: Mode::Auto }).unwrap();
        }
        let mut lagged = None;
        while let Some(ServerFrame::Event(event)) = frames.recv().await {
            if let Event::Lagged { missed } = event {
                lagged = Some(missed);
                break;
            }
        }
        assert!(lagged.is_some_and(|n| n > 0), "no Lagged event");
        // Once the console is gone, so is its forwarder.
        drop(frames);
        task.await.unwrap();
    }

    #[test]
    fn groups_are_read_from_etc_group_format() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-aic-test"), None);
    }
}
