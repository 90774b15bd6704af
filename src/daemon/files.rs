//! Pulls and pushes of files on this machine, for the relay: admitted like
//! commands (mode, permit, the operator's approval, the traffic ring), bytes
//! moved as binary frames within the relay's credit. A push is written to a
//! temporary file beside its target (0600, created exclusively), checked,
//! fsynced and renamed into place; nothing else of a file is kept, and none of
//! its bytes is logged.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::commands::{Admitted, Commands};
use super::pathwalk::{Refused, Resolved, changed_by, resolve};
use crate::protocol::agent::{AgentMessage, ExecRequest, Requester};
use crate::protocol::files::{
    FILE_CHUNK, FILE_WINDOW, FileFailure, FileOpened, FrameError, FrameKind, PullRequest, PushRequest, decode_frame,
    encode_frame, hex, human_size, sniff,
};

/// Mode of a pushed file when the caller gives none and it replaces nothing.
pub const DEFAULT_MODE: u32 = 0o644;

/// One frame for the relay from a transfer: a message, or an encoded binary frame.
#[derive(Debug)]
pub enum Outgoing {
    /// A JSON message.
    Message(Box<AgentMessage>),
    /// An encoded binary frame.
    Frame(Vec<u8>),
}

/// Where a transfer's frames go (the relay link), in order.
pub type FileOutbox = mpsc::Sender<Outgoing>;

/// Why a transfer failed, as the relay is told.
type Failure = (FileFailure, String);

/// The transfers of this daemon. Cheap to clone.
#[derive(Clone)]
pub struct Files(Arc<Inner>);

struct Inner {
    /// Admission, approval and the traffic ring, shared with commands.
    commands: Commands,
    /// Largest file moved, in bytes (the relay may ask for less).
    max_file: u64,
    /// Transfers in flight, by id. Held for a moment per frame, never across an `.await`.
    routes: Mutex<HashMap<Uuid, Route>>,
}

/// Where the relay's word about one transfer goes.
enum Route {
    /// A pull's credit: one permit per data frame it may send.
    Pull(Arc<Semaphore>),
    /// A push's incoming bytes, then `None` at its end frame.
    Push(mpsc::UnboundedSender<Option<Vec<u8>>>),
}

impl Files {
    /// No transfers yet; files up to `max_file` bytes.
    pub fn new(commands: Commands, max_file: u64) -> Self {
        Self(Arc::new(Inner { commands, max_file, routes: Mutex::default() }))
    }

    /// Serves a pull on its own task; its frames go to `out`. Cancelling `scope` stops it.
    pub fn pull(&self, req: PullRequest, out: FileOutbox, scope: &CancellationToken) {
        let credit = Arc::new(Semaphore::new(req.window.min(FILE_WINDOW) as usize));
        self.0.routes.lock().unwrap().insert(req.id, Route::Pull(Arc::clone(&credit)));
        let (this, scope) = (self.clone(), scope.clone());
        tokio::spawn(async move {
            let id = req.id;
            let result = this.pull_file(&req, &out, &credit, &scope).await;
            this.0.routes.lock().unwrap().remove(&id);
            if let Err((reason, message)) = result {
                let _ = out.send(Outgoing::Message(Box::new(AgentMessage::FileFailed { id, reason, message }))).await;
            }
        });
    }

    /// Serves a push on its own task; its frames go to `out`. Cancelling `scope` stops it.
    pub fn push(&self, req: PushRequest, out: FileOutbox, scope: &CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.routes.lock().unwrap().insert(req.id, Route::Push(tx));
        let (this, scope) = (self.clone(), scope.clone());
        tokio::spawn(async move {
            let id = req.id;
            let result = this.push_file(&req, rx, &out, &scope).await;
            this.0.routes.lock().unwrap().remove(&id);
            let msg = match result {
                Ok((size, sha256)) => AgentMessage::FileDone { id, size, sha256 },
                Err((reason, message)) => AgentMessage::FileFailed { id, reason, message },
            };
            let _ = out.send(Outgoing::Message(Box::new(msg))).await;
        });
    }

    /// The relay's credit for a pull.
    pub fn credit(&self, id: Uuid, chunks: u32) {
        if let Some(Route::Pull(credit)) = self.0.routes.lock().unwrap().get(&id) {
            credit.add_permits((chunks.min(FILE_WINDOW)) as usize);
        }
    }

    /// A binary frame from the relay: a push's bytes or its end.
    pub fn frame(&self, bytes: &[u8]) -> Result<(), FrameError> {
        let frame = decode_frame(bytes)?;
        if let Some(Route::Push(tx)) = self.0.routes.lock().unwrap().get(&frame.id) {
            let piece = match frame.kind {
                FrameKind::FileData => Some(frame.payload.to_vec()),
                FrameKind::FileEnd => None,
                // A command's output never comes from the relay.
                FrameKind::Stdout | FrameKind::Stderr => return Ok(()),
            };
            let _ = tx.send(piece);
        }
        Ok(())
    }

    fn cap(&self, asked: u64) -> u64 {
        self.0.max_file.min(asked)
    }

    async fn pull_file(
        &self,
        req: &PullRequest,
        out: &FileOutbox,
        credit: &Semaphore,
        scope: &CancellationToken,
    ) -> Result<(), Failure> {
        let size = tokio::fs::metadata(&req.path).await.ok().filter(|m| m.is_file()).map(|m| m.len());
        let what = match size {
            Some(size) => format!("pull {} from {}", human_size(size), req.path),
            None => format!("pull {}", req.path),
        };
        let admitted = self.admit(&what, req.id, &req.requester, scope).await?;
        let started = Instant::now();
        let result = self.send_file(req, out, credit, &admitted).await;
        admitted.finish(started, result.as_ref().err().map(|(_, m)| m.as_str()));
        result
    }

    /// Admits a transfer described as `what` like a command.
    async fn admit(
        &self,
        what: &str,
        id: Uuid,
        requester: &Requester,
        scope: &CancellationToken,
    ) -> Result<Admitted, Failure> {
        let req = ExecRequest {
            id,
            command: what.to_owned(),
            cwd: None,
            timeout_ms: 0,
            max_output: 0,
            pty: false,
            window: 0,
            chunk: 0,
            requester: requester.clone(),
        };
        self.0.commands.admit(&req, scope).await.map_err(|(reason, message)| (reason.into(), message))
    }

    /// Opens, checks and hashes the file, then streams the range asked for.
    async fn send_file(
        &self,
        req: &PullRequest,
        out: &FileOutbox,
        credit: &Semaphore,
        admitted: &Admitted,
    ) -> Result<(), Failure> {
        let (file, size, mode) = open_for_pull(&req.path, self.cap(req.max_size)).await?;
        let (sha256, head) = hash_file(&file, size).await?;
        let opened =
            FileOpened { id: req.id, size, mode, sha256: sha256.clone(), content_type: sniff(&head).to_owned() };
        send(out, Outgoing::Message(Box::new(AgentMessage::FileOpened(opened)))).await?;
        let (offset, len) = match req.range {
            None => (0, size),
            Some(range) => range.resolve(size).unwrap_or((size, 0)),
        };
        let whole = offset == 0 && len == size;
        let mut file = tokio::fs::File::from_std(file);
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io_failure)?;
        let streamed = stream_out(&mut file, req.id, len, out, credit, admitted).await?;
        if whole && streamed != sha256 {
            return Err((FileFailure::Failed, "the file changed while it was read; pull it again".into()));
        }
        send(out, Outgoing::Frame(encode_frame(FrameKind::FileEnd, req.id, 0, &[]))).await
    }

    async fn push_file(
        &self,
        req: &PushRequest,
        rx: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
        out: &FileOutbox,
        scope: &CancellationToken,
    ) -> Result<(u64, String), Failure> {
        let cap = self.cap(req.max_size);
        if req.size > cap {
            return Err((FileFailure::TooLarge, too_large(req.size, cap)));
        }
        // What is there now only shapes the operator's question; whether the
        // path is refused is told only after admission, so a caller cannot
        // learn which files exist without the operator's yes.
        // A replaced file lends only its permission bits: never its setuid,
        // setgid or sticky bit, which a local user may have set on a file of
        // theirs for root's push to inherit.
        let existing = std::fs::symlink_metadata(&req.path).ok().filter(|m| m.is_file()).map(|m| m.mode() & 0o777);
        let mode = req.mode.or(existing).unwrap_or(DEFAULT_MODE);
        let overwrite = if req.overwrite { ", overwrite" } else { "" };
        let what = format!("push {} to {}, mode {mode:04o}{overwrite}", human_size(req.size), req.path);
        let admitted = self.admit(&what, req.id, &req.requester, scope).await?;
        let started = Instant::now();
        let result = match push_target(&req.path, req.overwrite) {
            Ok(at) => receive_file(req, &at, mode, rx, out, &admitted).await,
            Err(refused) => Err(refused),
        };
        admitted.finish(started, result.as_ref().err().map(|(_, m)| m.as_str()));
        result
    }
}

/// Sends a frame to the link; fails when the link is gone.
async fn send(out: &FileOutbox, frame: Outgoing) -> Result<(), Failure> {
    out.send(frame).await.map_err(|_| (FileFailure::Failed, "the link to the relay went away".into()))
}

fn errno_failure(e: rustix::io::Errno) -> Failure {
    io_failure(e.into())
}

/// Why a transfer's path was not resolved, as the relay is told.
fn refusal(path: &str, e: Refused) -> Failure {
    match e {
        Refused::Io(e) if e.kind() == std::io::ErrorKind::NotFound => (
            FileFailure::NotFound,
            format!("{path}: a directory on the way does not exist on this machine; create it first (mkdir -p)"),
        ),
        Refused::Io(e) => io_failure(e),
        Refused::NoName | Refused::DotDot => (FileFailure::BadRequest, format!("{path}: {e}")),
        e => (FileFailure::NotAFile, e.to_string()),
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            (FileFailure::NotFound, format!("no such file or directory on this machine ({e})"))
        }
        _ => (FileFailure::Failed, format!("{e}")),
    }
}

fn too_large(size: u64, cap: u64) -> String {
    format!(
        "the file is {} ({size} bytes); this transfer moves at most {} ({cap} bytes). Split it (split -b) or compress it first",
        human_size(size),
        human_size(cap)
    )
}

fn directory_refusal(path: &str) -> Failure {
    (
        FileFailure::NotAFile,
        format!(
            "{path} is a directory; archive it first (e.g. remote_exec: tar czf /tmp/archive.tgz -C {path} .) and move the archive"
        ),
    )
}

/// Opens a file to pull: a regular file within the cap. Its size and mode.
async fn open_for_pull(path: &str, cap: u64) -> Result<(std::fs::File, u64, u32), Failure> {
    let at = resolve(Path::new(path), true).map_err(|e| refusal(path, e))?;
    // Non-blocking: a FIFO put where a file was expected must not hold a thread until a writer comes.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&at.dir, at.name.as_os_str(), flags, Mode::empty()).map_err(errno_failure)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(io_failure)?;
    if meta.is_dir() {
        return Err(directory_refusal(path));
    }
    if !meta.is_file() {
        return Err((FileFailure::NotAFile, format!("{path} is not a regular file (a device, socket or pipe)")));
    }
    if meta.len() > cap {
        return Err((FileFailure::TooLarge, too_large(meta.len(), cap)));
    }
    refuse_planted_hard_link(&at, &meta, path)?;
    Ok((file, meta.len(), meta.mode() & 0o7777))
}

/// Refuses a file with more than one name, in a directory another user can
/// change, that is not that user's: a hard link they may have made to a file
/// they cannot read (`/etc/shadow`, where `fs.protected_hardlinks` is off).
fn refuse_planted_hard_link(at: &Resolved, meta: &std::fs::Metadata, path: &str) -> Result<(), Failure> {
    let Some(changer) = changed_by(&at.dir).map_err(|e| refusal(path, e))? else { return Ok(()) };
    if meta.nlink() > 1 && (changer == 0 || meta.uid() != changer) {
        let message = format!(
            "{path} has {} names and lies in a directory another user can change, who does not own it; \
             aic does not read it (a hard link there may point anywhere). Copy it elsewhere first",
            meta.nlink()
        );
        return Err((FileFailure::NotAFile, message));
    }
    Ok(())
}

/// SHA-256 of the first `size` bytes of `file`, and its first 512 bytes, read off the async threads.
async fn hash_file(file: &std::fs::File, size: u64) -> Result<(String, Vec<u8>), Failure> {
    let file = file.try_clone().map_err(io_failure)?;
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(String, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        let (mut at, mut head) = (0u64, Vec::new());
        while at < size {
            let want = buf.len().min((size - at) as usize);
            let n = file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            if head.len() < 512 {
                head.extend_from_slice(&buf[..n.min(512 - head.len())]);
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok((hex(&hasher.finalize()), head))
    });
    hashed.await.map_err(|e| (FileFailure::Failed, e.to_string()))?.map_err(io_failure)
}

/// Streams `len` bytes of `file` as data frames, each within credit. The hex SHA-256 of what was sent.
async fn stream_out(
    file: &mut tokio::fs::File,
    id: Uuid,
    len: u64,
    out: &FileOutbox,
    credit: &Semaphore,
    admitted: &Admitted,
) -> Result<String, Failure> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; FILE_CHUNK];
    let (mut sent, mut seq) = (0u64, 0u64);
    while sent < len {
        tokio::select! {
            permit = credit.acquire() => permit.map_err(|_| (FileFailure::Failed, "closed".to_owned()))?.forget(),
            () = admitted.cancel.cancelled() => return Err((FileFailure::Failed, "cancelled by its caller".into())),
        }
        let want = buf.len().min((len - sent) as usize);
        let n = file.read(&mut buf[..want]).await.map_err(io_failure)?;
        if n == 0 {
            return Err((FileFailure::Failed, "the file got shorter while it was read; pull it again".into()));
        }
        hasher.update(&buf[..n]);
        send(out, Outgoing::Frame(encode_frame(FrameKind::FileData, id, seq, &buf[..n]))).await?;
        admitted.progress(n as u64);
        sent += n as u64;
        seq += 1;
    }
    Ok(hex(&hasher.finalize()))
}

/// Resolves where a push goes ([`resolve`]: its directory opened once, no
/// link followed that another user could have made) and checks it.
fn push_target(path: &str, overwrite: bool) -> Result<Resolved, Failure> {
    let at = resolve(Path::new(path), false).map_err(|e| refusal(path, e))?;
    check_push_target(&at, path, overwrite)?;
    Ok(at)
}

/// Checks the final name of a push: it is not a directory or a symbolic link
/// (a link is refused, never written through or replaced); an existing file
/// only with `overwrite`. The permission bits of the existing file, if any (never setuid or setgid).
fn check_push_target(at: &Resolved, shown: &str, overwrite: bool) -> Result<Option<u32>, Failure> {
    match rustix::fs::statat(&at.dir, at.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(errno_failure(e)),
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&at.dir, at.name.as_os_str(), Vec::new())
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err((
                    FileFailure::NotAFile,
                    format!("{shown} is a symbolic link (to {target}); push to the path it points to instead"),
                ))
            }
            FileType::Directory => Err(directory_refusal(shown)),
            _ if !overwrite => {
                Err((FileFailure::Exists, format!("{shown} already exists; send overwrite=true to replace it")))
            }
            _ => Ok(Some(st.st_mode & 0o777)),
        },
    }
}

/// A temporary file in the target's directory, removed unless it was renamed into place.
struct TempFile {
    /// The directory it is in, as resolved once for the push.
    dir: OwnedFd,
    /// Its name there.
    name: OsString,
    /// Renamed into place: not to be removed.
    kept: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = rustix::fs::unlinkat(&self.dir, self.name.as_os_str(), AtFlags::empty());
        }
    }
}

/// Creates `.<name>.aic-<random>.tmp` in the target's directory, exclusively, mode 0600, never through a link.
fn create_temp(at: &Resolved) -> Result<(std::fs::File, TempFile), Failure> {
    let mut name = OsString::from(".");
    name.push(&at.name);
    name.push(format!(".aic-{}.tmp", &Uuid::new_v4().simple().to_string()[..12]));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&at.dir, name.as_os_str(), flags, Mode::from_raw_mode(0o600)).map_err(errno_failure)?;
    let dir = at.dir.try_clone().map_err(io_failure)?;
    Ok((std::fs::File::from(fd), TempFile { dir, name, kept: false }))
}

/// Receives a push's bytes into a temporary file and puts it in place.
async fn receive_file(
    req: &PushRequest,
    at: &Resolved,
    mode: u32,
    mut rx: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    out: &FileOutbox,
    admitted: &Admitted,
) -> Result<(u64, String), Failure> {
    let (file, mut temp) = create_temp(at)?;
    let mut file = tokio::fs::File::from_std(file);
    let credit = |chunks| Outgoing::Message(Box::new(AgentMessage::FileCredit { id: req.id, chunks }));
    send(out, credit(FILE_WINDOW)).await?;
    let mut hasher = Sha256::new();
    let (mut written, mut unacked) = (0u64, 0u32);
    loop {
        let piece = tokio::select! {
            piece = rx.recv() => piece,
            () = admitted.cancel.cancelled() => return Err((FileFailure::Failed, "cancelled by its caller".into())),
        };
        let Some(Some(data)) = piece else { break };
        written += data.len() as u64;
        if written > req.size {
            return Err((FileFailure::BadRequest, format!("more than the {} bytes announced arrived", req.size)));
        }
        hasher.update(&data);
        file.write_all(&data).await.map_err(io_failure)?;
        admitted.progress(data.len() as u64);
        unacked += 1;
        if unacked >= FILE_WINDOW / 2 {
            send(out, credit(unacked)).await?;
            unacked = 0;
        }
    }
    if written != req.size {
        return Err((FileFailure::Failed, format!("{written} of {} bytes arrived; nothing was written", req.size)));
    }
    let sha256 = hex(&hasher.finalize());
    if let Some(expected) = &req.sha256
        && *expected != sha256
    {
        let message = format!("the bytes have SHA-256 {sha256}, not {expected}; nothing was written");
        return Err((FileFailure::ChecksumMismatch, message));
    }
    file.sync_all().await.map_err(io_failure)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).await.map_err(io_failure)?;
    drop(file);
    put_in_place(&temp, at, &req.path, req.overwrite)?;
    temp.kept = true;
    Ok((written, sha256))
}

/// Renames the temporary file onto the target within the directory resolved
/// once (never onto one that appeared meanwhile unless `overwrite`), then
/// syncs the directory.
fn put_in_place(temp: &TempFile, at: &Resolved, shown: &str, overwrite: bool) -> Result<(), Failure> {
    use rustix::fs::{RenameFlags, renameat_with};
    // Checked again just before: a link or directory made meanwhile is not replaced.
    check_push_target(at, shown, true)?;
    let flags = if overwrite { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
    match renameat_with(&at.dir, temp.name.as_os_str(), &at.dir, at.name.as_os_str(), flags) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {
            let message = format!("{shown} appeared while the file was sent; send overwrite=true to replace it");
            return Err((FileFailure::Exists, message));
        }
        Err(e) => return Err((FileFailure::Failed, format!("renaming into place: {e}"))),
    }
    let _ = rustix::fs::fsync(&at.dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &Path, overwrite: bool) -> Result<Option<u32>, FileFailure> {
        let shown = path.display().to_string();
        let at = resolve(path, false).map_err(|e| refusal(&shown, e).0)?;
        check_push_target(&at, &shown, overwrite).map_err(|e| e.0)
    }

    #[test]
    fn push_targets_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        assert_eq!(target(&file, false), Ok(None));
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(target(&file, false), Err(FileFailure::Exists));
        assert!(target(&file, true).unwrap().is_some());
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(target(&link, true), Err(FileFailure::NotAFile));
        assert_eq!(target(dir.path(), true), Err(FileFailure::NotAFile));
        assert_eq!(target(&dir.path().join("no/f"), false), Err(FileFailure::NotFound));
        assert_eq!(target(&dir.path().join("x/../f"), true), Err(FileFailure::BadRequest));
    }

    #[test]
    fn a_temporary_file_is_private_and_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let at = resolve(&dir.path().join("target"), false).unwrap();
        let (_, temp) = create_temp(&at).unwrap();
        let path = dir.path().join(&temp.name);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(temp);
        assert!(!path.exists());
    }

    /// A local user swaps a directory of the path for a link to another
    /// directory after the push was resolved: the file still lands in the
    /// directory resolved, and nothing is written where the link points.
    #[test]
    fn a_directory_swapped_for_a_link_does_not_redirect_a_push() {
        let base = tempfile::tempdir().unwrap();
        let (user, elsewhere) = (base.path().join("user"), base.path().join("etc"));
        std::fs::create_dir(&user).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let at = resolve(&user.join("x"), false).unwrap();
        let (file, temp) = create_temp(&at).unwrap();
        drop(file);
        std::fs::rename(&user, base.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &user).unwrap();
        put_in_place(&temp, &at, "x", false).unwrap();
        assert!(base.path().join("moved/x").is_file());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    /// A hard link to a root-only file in a directory of another user is not
    /// read (root only: the test gives the directory away).
    #[tokio::test]
    async fn a_pull_refuses_a_hard_link_planted_in_another_users_directory() {
        if !rustix::process::geteuid().is_root() {
            return eprintln!("skipped: needs root to give a directory to another user");
        }
        let base = tempfile::tempdir().unwrap();
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        rustix::fs::chown(&theirs, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        let secret = base.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        std::fs::hard_link(&secret, theirs.join("log")).unwrap();
        let refused = open_for_pull(theirs.join("log").to_str().unwrap(), 1 << 20).await.unwrap_err();
        assert_eq!(refused.0, FileFailure::NotAFile, "{}", refused.1);
        assert!(refused.1.contains("hard link"), "{}", refused.1);
        std::fs::write(theirs.join("own"), b"o").unwrap();
        assert!(open_for_pull(theirs.join("own").to_str().unwrap(), 1 << 20).await.is_ok());
    }

    #[tokio::test]
    async fn a_pull_neither_follows_a_planted_link_nor_waits_on_a_fifo() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(base.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(base.path().join("secret"), open.join("log")).unwrap();
        let refused = open_for_pull(open.join("log").to_str().unwrap(), 1 << 20).await.unwrap_err();
        assert_eq!(refused.0, FileFailure::NotAFile, "{}", refused.1);
        let fifo = base.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let refused = open_for_pull(fifo.to_str().unwrap(), 1 << 20).await.unwrap_err();
        assert_eq!(refused.0, FileFailure::NotAFile, "{}", refused.1);
    }
}
