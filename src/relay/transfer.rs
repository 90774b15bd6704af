//! File transfers in flight on one agent link: the daemon's messages and
//! binary frames routed to the one caller waiting on each, and the credit
//! window that keeps the relay from holding more than a window per transfer.
//! A transfer on a machine another relay of a cluster holds goes through
//! [`super::cluster`], behind the same [`Transfer`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc};
use uuid::Uuid;

use super::hub::{AgentConn, Revocation};
use crate::protocol::agent::{AgentMessage, RelayMessage};
use crate::protocol::files::{
    FILE_CHUNK, FILE_WINDOW, FileFailure, FileOpened, FrameError, FrameKind, PullRequest, PushRequest, decode_frame,
    encode_frame,
};

/// What a caller hears about its transfer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileEvent {
    /// A pulled file is open: its size, mode and checksum.
    Opened(FileOpened),
    /// A chunk of a pulled file.
    Data(Vec<u8>),
    /// A pulled file's bytes are complete.
    End,
    /// A pushed file is in place.
    Done {
        /// Bytes written.
        size: u64,
        /// Hex SHA-256 of what was written.
        sha256: String,
    },
    /// The transfer did not happen, or stopped.
    Failed(FileFailure, String),
    /// The operator's decision (a block, a code reset) stopped it.
    Revoked(Revocation),
    /// The relay of the cluster holding the machine's link stopped answering mid-transfer.
    RelayLost,
}

/// The transfers of one link. The map is touched for a moment per message,
/// never across an `.await`, so a std Mutex does.
#[derive(Default)]
pub struct Transfers {
    routes: Mutex<HashMap<Uuid, Route>>,
}

/// Where one transfer's events go, and what its daemon may still send.
struct Route {
    events: mpsc::UnboundedSender<FileEvent>,
    /// A push's credit from the daemon: one permit per frame the relay may send.
    credit: Arc<Semaphore>,
    /// A pull's data frames the daemon may still send before more credit.
    allowance: u64,
    /// The sequence number the next data frame of a pull must carry.
    next_seq: u64,
    /// The account that asked, if any: blocking it stops the transfer.
    account: Option<i64>,
}

/// Why a transfer could not be handed to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OpenError {
    /// The link is gone.
    Offline,
    /// The link carries as many transfers as it may.
    Busy(usize),
    /// In a cluster, NATS's `max_payload` (this many bytes) is below a file frame.
    PayloadLimit(usize),
}

impl Transfers {
    /// Routes a file message from the daemon; any other message is handed back.
    pub fn dispatch(&self, msg: AgentMessage) -> Option<AgentMessage> {
        let (id, event) = match msg {
            AgentMessage::FileOpened(opened) => (opened.id, FileEvent::Opened(opened)),
            AgentMessage::FileDone { id, size, sha256 } => (id, FileEvent::Done { size, sha256 }),
            AgentMessage::FileFailed { id, reason, message } => (id, FileEvent::Failed(reason, message)),
            AgentMessage::FileCredit { id, chunks } => {
                if let Some(route) = self.routes.lock().unwrap().get(&id) {
                    // Never more than a window outstanding, whatever the daemon says.
                    let room = (FILE_WINDOW as usize).saturating_sub(route.credit.available_permits());
                    route.credit.add_permits((chunks as usize).min(room));
                }
                return None;
            }
            other => return Some(other),
        };
        let last = !matches!(event, FileEvent::Opened(_));
        let mut routes = self.routes.lock().unwrap();
        let sender =
            if last { routes.remove(&id).map(|r| r.events) } else { routes.get(&id).map(|r| r.events.clone()) };
        drop(routes);
        if let Some(sender) = sender {
            let _ = sender.send(event);
        }
        None
    }

    /// Routes a binary frame from the daemon. A frame for a transfer nobody
    /// waits for is dropped; one past its credit or out of order ends its transfer.
    pub fn frame(&self, conn: &AgentConn, bytes: &[u8]) -> Result<(), FrameError> {
        let frame = decode_frame(bytes)?;
        let mut routes = self.routes.lock().unwrap();
        let Some(route) = routes.get_mut(&frame.id) else { return Ok(()) };
        let event = match frame.kind {
            FrameKind::FileData
                if route.allowance > 0 && frame.seq == route.next_seq && frame.payload.len() <= FILE_CHUNK =>
            {
                route.allowance -= 1;
                route.next_seq += 1;
                let _ = route.events.send(FileEvent::Data(frame.payload.to_vec()));
                return Ok(());
            }
            FrameKind::FileData => {
                FileEvent::Failed(FileFailure::Failed, "the machine's daemon sent more than the relay asked for".into())
            }
            FrameKind::FileEnd => FileEvent::End,
            // Routed to commands before transfers see them.
            FrameKind::Stdout | FrameKind::Stderr => return Ok(()),
        };
        if let Some(route) = routes.remove(&frame.id) {
            let failed = matches!(event, FileEvent::Failed(..));
            let _ = route.events.send(event);
            drop(routes);
            if failed {
                conn.send(RelayMessage::Cancel { id: frame.id });
            }
        }
        Ok(())
    }

    /// Stops the transfers of `account` (all when `None`): each caller hears
    /// why, and the daemon is told to cancel. How many were stopped.
    pub fn revoke(&self, conn: &AgentConn, why: Revocation, account: Option<i64>) -> usize {
        let stopped: Vec<(Uuid, Route)> = {
            let mut routes = self.routes.lock().unwrap();
            let ids: Vec<Uuid> =
                routes.iter().filter(|(_, r)| account.is_none() || r.account == account).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| routes.remove(&id).map(|r| (id, r))).collect()
        };
        for (id, route) in &stopped {
            conn.send(RelayMessage::Cancel { id: *id });
            let _ = route.events.send(FileEvent::Revoked(why));
        }
        stopped.len()
    }

    /// Ends every caller's wait: the link is gone.
    pub fn fail_all(&self) {
        self.routes.lock().unwrap().clear();
    }

    /// Registers a transfer; a pull may be sent `allowance` data frames at first.
    fn open(&self, id: Uuid, allowance: u64, max: usize, account: Option<i64>) -> Result<RouteEnds, OpenError> {
        let (events, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(0));
        let mut routes = self.routes.lock().unwrap();
        if routes.len() >= max {
            return Err(OpenError::Busy(max));
        }
        routes.insert(id, Route { events, credit: Arc::clone(&credit), allowance, next_seq: 0, account });
        Ok((rx, credit))
    }

    /// Lets a pull's daemon send `chunks` more data frames.
    fn grant(&self, id: Uuid, chunks: u32) -> bool {
        match self.routes.lock().unwrap().get_mut(&id) {
            Some(route) => {
                route.allowance += u64::from(chunks);
                true
            }
            None => false,
        }
    }

    /// Forgets a transfer (its caller went away).
    fn close(&self, id: Uuid) -> bool {
        self.routes.lock().unwrap().remove(&id).is_some()
    }
}

/// A transfer to open, as a caller's relay asks the relay holding the machine's link.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Open {
    /// Fetch a file.
    Pull(PullRequest),
    /// Write a file.
    Push(PushRequest),
}

/// What a caller keeps of a new route: its events and (push) the daemon's credit.
type RouteEnds = (mpsc::UnboundedReceiver<FileEvent>, Arc<Semaphore>);

/// A transfer in flight, seen from the caller's side. Dropping it before it
/// ends cancels it on the machine (a push's temporary file is removed).
pub struct Transfer {
    id: Uuid,
    /// Where its frames and credit go.
    link: Link,
    events: mpsc::UnboundedReceiver<FileEvent>,
    /// A push's credit from the daemon.
    credit: Arc<Semaphore>,
    /// Data chunks of a pull consumed since credit was last granted.
    consumed: u32,
    /// The next frame's sequence number (push).
    seq: u64,
    /// Its last event arrived: nothing to cancel.
    finished: bool,
}

/// Where a transfer runs.
enum Link {
    /// On a link this relay holds.
    Local(Arc<AgentConn>),
    /// Through the relay of the cluster that holds the machine's link.
    Remote(super::cluster::RemoteTransfer),
}

impl Transfer {
    /// Opens `open` on the link `conn`, which carries `max` transfers at most.
    pub fn open(conn: &Arc<AgentConn>, open: Open, max: usize, account: Option<i64>) -> Result<Self, OpenError> {
        match open {
            Open::Pull(req) => Self::pull(conn, req, max, account),
            Open::Push(req) => Self::push(conn, req, max, account),
        }
    }

    /// Asks the daemon for a file.
    pub fn pull(conn: &Arc<AgentConn>, req: PullRequest, max: usize, account: Option<i64>) -> Result<Self, OpenError> {
        let id = req.id;
        let (events, credit) = conn.files.open(id, u64::from(req.window), max, account)?;
        let this = Self::new(Link::Local(Arc::clone(conn)), id, events, credit);
        if !conn.send(RelayMessage::FilePull(req)) {
            return Err(OpenError::Offline);
        }
        Ok(this)
    }

    /// Asks the daemon to write a file; its bytes go with [`Self::send`].
    pub fn push(conn: &Arc<AgentConn>, req: PushRequest, max: usize, account: Option<i64>) -> Result<Self, OpenError> {
        let id = req.id;
        let (events, credit) = conn.files.open(id, 0, max, account)?;
        let this = Self::new(Link::Local(Arc::clone(conn)), id, events, credit);
        if !conn.send(RelayMessage::FilePush(req)) {
            return Err(OpenError::Offline);
        }
        Ok(this)
    }

    /// A transfer through another relay: its events arrive on `events`, and
    /// `credit` holds the permits that relay grants a push.
    pub(super) fn remote(
        id: Uuid,
        remote: super::cluster::RemoteTransfer,
        events: mpsc::UnboundedReceiver<FileEvent>,
        credit: Arc<Semaphore>,
    ) -> Self {
        Self::new(Link::Remote(remote), id, events, credit)
    }

    fn new(link: Link, id: Uuid, events: mpsc::UnboundedReceiver<FileEvent>, credit: Arc<Semaphore>) -> Self {
        Self { id, link, events, credit, consumed: 0, seq: 0, finished: false }
    }

    /// Lets the daemon start sending a pull asked for with no window (one
    /// parked behind a download link until it is used).
    pub fn start(&mut self) {
        match &self.link {
            Link::Local(conn) => {
                if conn.files.grant(self.id, FILE_WINDOW) {
                    conn.send(RelayMessage::FileCredit { id: self.id, chunks: FILE_WINDOW });
                }
            }
            Link::Remote(remote) => remote.start(),
        }
    }

    /// The next event; `None` when the link went away. Taking a data chunk
    /// grants the daemon credit for more, half a window at a time.
    pub async fn next(&mut self) -> Option<FileEvent> {
        let event = self.events.recv().await;
        match &event {
            Some(FileEvent::Data(_)) => match &self.link {
                Link::Local(conn) => {
                    self.consumed += 1;
                    if self.consumed >= FILE_WINDOW / 2 && conn.files.grant(self.id, self.consumed) {
                        conn.send(RelayMessage::FileCredit { id: self.id, chunks: self.consumed });
                        self.consumed = 0;
                    }
                }
                Link::Remote(remote) => remote.took(),
            },
            Some(FileEvent::Opened(_)) => {}
            _ => self.finished = true,
        }
        event
    }

    /// Waits until the daemon is ready for a push's bytes (the operator
    /// approved, the temporary file is open); an event that comes first (the
    /// operator said no) is returned instead.
    pub async fn ready(&mut self) -> Result<(), Option<FileEvent>> {
        tokio::select! {
            permit = self.credit.acquire() => {
                drop(permit.map_err(|_| None)?);
                Ok(())
            }
            event = self.events.recv() => {
                self.finished = true;
                Err(event)
            }
        }
    }

    /// Sends one frame of a push once the daemon grants credit for it; an
    /// event that comes first (the operator said no) is returned instead.
    pub async fn send(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), Option<FileEvent>> {
        tokio::select! {
            permit = self.credit.acquire() => {
                permit.map_err(|_| None)?.forget();
            }
            event = self.events.recv() => {
                self.finished = true;
                return Err(event);
            }
        }
        self.seq += 1;
        match &mut self.link {
            Link::Local(conn) => {
                let frame = encode_frame(kind, self.id, self.seq - 1, payload);
                if conn.send_frame(frame) { Ok(()) } else { Err(None) }
            }
            Link::Remote(remote) => remote.send(kind, payload).await.map_err(|()| None),
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // A remote transfer's guard tells the holding relay, which drops its own.
        if let Link::Local(conn) = &self.link
            && !self.finished
            && conn.files.close(self.id)
        {
            conn.send(RelayMessage::Cancel { id: self.id });
        }
    }
}
