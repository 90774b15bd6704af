//! File transfers on a machine another relay of the cluster holds: the
//! holder opens the transfer on its link and relays it as a command's output
//! goes, in sequenced frames under NATS's payload limit. A pull's bytes run
//! at most [`WINDOW`] frames ahead of the caller's acknowledgements (the
//! holder takes no more from the daemon meanwhile, so a slow reader slows
//! the daemon); a push's bytes go only as far as the credit the holder grants
//! as its daemon takes them. Heartbeats go both ways, and either side gives
//! up after [`SILENCE`]. No byte of a file is logged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::{Client, Subscriber};
use axum::body::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    ACK, Answer, Ask, BEAT, CANCEL, Cluster, EVENT, HEARTBEAT, OUTPUT, SILENCE, WINDOW, acked_now, acknowledgement,
    frame, json, nats_down, number, request_failed, subject, within_window,
};
use crate::protocol::files::{FILE_CHUNK, FrameKind};
use crate::relay::hub::{AgentConn, Progress};
use crate::relay::keys::Digest;
use crate::relay::transfer::{FileEvent, Open, OpenError, Transfer};

/// Frame kind, holder to caller: credit for this many more of a push's frames.
const CREDIT: u8 = b'k';
/// Frame kind, caller to holder: a pull opened with no window may start.
const START: u8 = b's';
/// Frame kind, caller to holder: a push's frame (stream byte 0 for data, 1 for its end).
const PUSH: u8 = b'p';
/// What a frame needs beyond a file chunk in NATS's payload: its header, with room to spare.
const FRAME_ROOM: usize = 1024;

impl Cluster {
    /// Opens a transfer on the relay holding the machine's link; its events
    /// arrive on the returned handle as if the link were here.
    pub async fn open(&self, code_hash: &Digest, open: Open, account: Option<i64>) -> Result<Transfer, OpenError> {
        let limit = self.client.server_info().max_payload;
        if limit > 0 && limit < FILE_CHUNK + FRAME_ROOM {
            return Err(OpenError::PayloadLimit(limit));
        }
        let id = match &open {
            Open::Pull(req) => req.id,
            Open::Push(req) => req.id,
        };
        let frames_subject = self.client.new_inbox();
        let frames = self.client.subscribe(frames_subject.clone()).await.map_err(|e| {
            nats_down(&e);
            OpenError::Offline
        })?;
        let ask = json(&Ask::Transfer { open: Box::new(open), account, frames: frames_subject });
        let reply = self.client.request(subject(code_hash), ask.into()).await.map_err(|e| {
            request_failed(&e);
            OpenError::Offline
        })?;
        let holder = match serde_json::from_slice::<Answer>(&reply.payload) {
            Ok(Answer::Accepted { acks }) => acks,
            Ok(Answer::NotOpened(e)) => return Err(e),
            _ => return Err(OpenError::Offline),
        };
        Ok(self.remote(id, frames, holder))
    }

    /// The caller's handle on a transfer `holder` (an inbox of the relay
    /// serving it) relays to `frames`.
    pub(super) fn remote(&self, id: uuid::Uuid, frames: Subscriber, holder: String) -> Transfer {
        let (tx, events) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(0));
        let (cancel, progress) = (CancellationToken::new(), Arc::new(Progress::default()));
        let ends = Ends { tx, credit: Arc::clone(&credit), cancel: cancel.clone(), progress: Arc::clone(&progress) };
        tokio::spawn(receive(self.client.clone(), frames, holder.clone(), ends));
        let remote =
            RemoteTransfer { client: self.client.clone(), holder, progress, seq: 0, _cancel: cancel.drop_guard() };
        Transfer::remote(id, remote, events, credit)
    }

    /// Opens the transfer a caller's relay asked for on the link `conn`,
    /// answers on `reply`, and relays it to the caller's `frames` inbox.
    pub(super) async fn serve_transfer(&self, conn: &Arc<AgentConn>, ask: TransferAsk, reply: String) {
        let TransferAsk { open, account, frames } = ask;
        let push = matches!(open, Open::Push(_));
        let transfer = match Transfer::open(conn, open, conn.max_in_flight(), account) {
            Ok(transfer) => transfer,
            Err(e) => return self.publish(reply, json(&Answer::NotOpened(e))).await,
        };
        let inbox = self.client.new_inbox();
        // Dropping the transfer (here, or when the pump ends) cancels it on the machine.
        let Ok(inbound) = self.client.subscribe(inbox.clone()).await else { return };
        self.publish(reply, json(&Answer::Accepted { acks: inbox })).await;
        self.relay_to(frames, push, transfer, inbound).await;
    }

    /// Relays `transfer` (a push when `push`) to a caller's `frames` inbox,
    /// hearing the caller on `inbound`, until it ends.
    pub(super) async fn relay_to(&self, frames: String, push: bool, transfer: Transfer, inbound: Subscriber) {
        let pump = Pump {
            cluster: self,
            frames,
            seq: 0,
            sent: 0,
            acked: 0,
            heard: Instant::now(),
            ready: !push,
            queue: VecDeque::new(),
            next_in: 0,
            forwarded: 0,
        };
        pump.run(transfer, inbound).await;
    }
}

/// An [`Ask::Transfer`]'s fields.
pub(super) struct TransferAsk {
    /// The transfer, as the caller's relay checked it.
    pub open: Open,
    /// The account that asked, if any: blocking it stops the transfer.
    pub account: Option<i64>,
    /// The caller's inbox for frames.
    pub frames: String,
}

/// The caller's end of a transfer through another relay, inside its [`Transfer`].
pub struct RemoteTransfer {
    /// The NATS connection frames go out on.
    client: Client,
    /// The holding relay's inbox for acknowledgements, pushed frames and cancels.
    holder: String,
    /// The pulled chunks the caller took: acknowledged as taken, so the
    /// holder runs at most a window ahead of the caller, not of this relay.
    progress: Arc<Progress>,
    /// The last pushed frame's sequence number.
    seq: u64,
    /// Dropped with the transfer: tells the holder to cancel it, unless it ended.
    _cancel: DropGuard,
}

impl RemoteTransfer {
    /// Lets the holder's daemon start sending a pull opened with no window.
    pub fn start(&self) {
        let (client, holder) = (self.client.clone(), self.holder.clone());
        tokio::spawn(async move {
            let _ = client.publish(holder, vec![START].into()).await;
        });
    }

    /// The caller took a pulled chunk.
    pub fn took(&self) {
        self.progress.taken.fetch_add(1, Ordering::Relaxed);
        self.progress.moved.notify_one();
    }

    /// Sends a push's frame to the holder (the caller waited for its credit).
    pub async fn send(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), ()> {
        self.seq += 1;
        let end = u8::from(kind == FrameKind::FileEnd);
        let sent = self.client.publish(self.holder.clone(), frame(PUSH, end, self.seq, payload).into()).await;
        sent.map_err(|e| tracing::warn!("pushing a file through NATS: {e}"))
    }
}

/// The caller's side of a remote transfer, as [`receive`] serves it.
struct Ends {
    /// Where its events go; dropped without a last event when the daemon's link went away.
    tx: mpsc::UnboundedSender<FileEvent>,
    /// A push's credit, as the holder grants it.
    credit: Arc<Semaphore>,
    /// Cancelled when the caller drops its [`Transfer`].
    cancel: CancellationToken,
    /// How many pulled chunks the caller took.
    progress: Arc<Progress>,
}

/// What a frame from the holder says.
enum Heard {
    /// It is still there.
    Beat,
    /// A push may send this many more frames.
    Credit(u64),
    /// The transfer's next event; `None` when its daemon's link went away.
    Event(Option<FileEvent>),
}

/// A frame from the holder: its sequence number (0 for a heartbeat) and what it says.
fn decode(payload: &[u8]) -> Option<(u64, Heard)> {
    let (&[kind, _], rest) = payload.split_first_chunk::<2>()?;
    let (seq, body) = (number(rest), rest.get(8..)?);
    let heard = match kind {
        BEAT => return Some((0, Heard::Beat)),
        OUTPUT => Heard::Event(Some(FileEvent::Data(body.to_vec()))),
        EVENT => Heard::Event(serde_json::from_slice(body).ok()?),
        CREDIT => Heard::Credit(number(body)),
        _ => return None,
    };
    Some((seq, heard))
}

/// The caller's side of a remote transfer: frames in, events and credit out,
/// acknowledgements (and heartbeats) back.
async fn receive(client: Client, mut frames: Subscriber, holder: String, ends: Ends) {
    let ack = |n: u64| client.publish(holder.clone(), acknowledgement(n).into());
    let (mut got, mut acked, mut heard) = (0u64, 0u64, Instant::now());
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = ends.cancel.cancelled() => {
                let _ = client.publish(holder.clone(), vec![CANCEL].into()).await;
                return;
            }
            _ = ends.progress.moved.notified() => {
                let taken = ends.progress.taken.load(Ordering::Relaxed);
                if taken >= acked + WINDOW / 2 {
                    acked = taken;
                    let _ = ack(taken).await;
                }
            }
            msg = frames.next() => {
                heard = Instant::now();
                let Some((seq, said)) = msg.and_then(|m| decode(&m.payload)) else {
                    let _ = ends.tx.send(FileEvent::RelayLost);
                    return;
                };
                if let Heard::Beat = said {
                    continue;
                }
                if Some(seq) != got.checked_add(1) {
                    tracing::warn!("a frame of a file transfer was lost between relays");
                    let _ = ends.tx.send(FileEvent::RelayLost);
                    return;
                }
                got = seq;
                if !deliver(&ends, said) {
                    if ends.tx.is_closed() {
                        // The caller let go as its last events came: the holder need not wait for silence.
                        let _ = client.publish(holder.clone(), vec![CANCEL].into()).await;
                    }
                    return;
                }
            }
            _ = beat.tick() => {
                if heard.elapsed() > SILENCE {
                    let _ = ends.tx.send(FileEvent::RelayLost);
                    return;
                }
                acked = ends.progress.taken.load(Ordering::Relaxed);
                let _ = ack(acked).await;
            }
        }
    }
}

/// Hands what the holder said to the caller: whether more is to come.
fn deliver(ends: &Ends, said: Heard) -> bool {
    match said {
        Heard::Beat => true,
        Heard::Credit(n) => {
            // Never more than a window outstanding, whatever the holder says.
            let room = (WINDOW as usize).saturating_sub(ends.credit.available_permits());
            ends.credit.add_permits(usize::try_from(n).unwrap_or(usize::MAX).min(room));
            true
        }
        Heard::Event(None) => false,
        Heard::Event(Some(event)) => {
            let more = matches!(event, FileEvent::Opened(_) | FileEvent::Data(_));
            more & ends.tx.send(event).is_ok()
        }
    }
}

/// One turn of a transfer on the holder's link.
enum Step {
    /// A push's daemon is ready for its bytes, or said something else first.
    Ready(Result<(), Option<FileEvent>>),
    /// A pushed frame went to the daemon, or it said something else first.
    Sent(Result<(), Option<FileEvent>>),
    /// The transfer's next event.
    Event(Option<FileEvent>),
}

/// The next turn: wait for a push's daemon to be ready, hand it the next
/// frame the caller sent, or wait for the transfer's next event.
async fn step(transfer: &mut Transfer, ready: bool, front: Option<(FrameKind, Bytes)>) -> Step {
    match (ready, front) {
        (false, _) => Step::Ready(transfer.ready().await),
        (true, Some((kind, data))) => Step::Sent(transfer.send(kind, &data).await),
        (true, None) => Step::Event(transfer.next().await),
    }
}

/// The holder's side of a remote transfer.
struct Pump<'a> {
    /// The cluster, whose NATS connection frames go out on.
    cluster: &'a Cluster,
    /// The caller's inbox for frames.
    frames: String,
    /// The last sequenced frame's number.
    seq: u64,
    /// Pulled chunks sent: at most a window past the caller's acknowledgement.
    sent: u64,
    /// Pulled chunks the caller says it took.
    acked: u64,
    /// When the caller last said anything.
    heard: Instant,
    /// A pull, or a push whose daemon is ready for its bytes (the caller got credit).
    ready: bool,
    /// A push's frames from the caller, waiting for the daemon's credit:
    /// at most a window, as the caller gets no more credit.
    queue: VecDeque<(FrameKind, Bytes)>,
    /// The last pushed frame's sequence number.
    next_in: u64,
    /// Pushed frames handed to the daemon since the caller was last given credit.
    forwarded: u64,
}

impl Pump<'_> {
    /// Relays the transfer until it ends, the caller cancels, or either side
    /// goes silent; dropping `transfer` then cancels it on the machine.
    async fn run(mut self, mut transfer: Transfer, mut inbound: Subscriber) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            let front = self.queue.front().cloned();
            tokio::select! {
                turn = step(&mut transfer, self.ready, front), if within_window(self.sent, self.acked) => {
                    if !self.stepped(turn).await {
                        break;
                    }
                }
                msg = inbound.next() => match self.heard(msg, &mut transfer) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(()) => {
                        self.event(Some(FileEvent::RelayLost)).await;
                        break;
                    }
                },
                _ = beat.tick() => {
                    if self.heard.elapsed() > SILENCE {
                        tracing::warn!("the caller's relay went silent; cancelling its file transfer");
                        return;
                    }
                    self.cluster.publish(self.frames.clone(), frame(BEAT, 0, 0, &[])).await;
                }
            }
        }
        let _ = self.cluster.client.flush().await;
    }

    /// Acts on a turn: whether the transfer goes on.
    async fn stepped(&mut self, turn: Step) -> bool {
        match turn {
            Step::Ready(Ok(())) => {
                self.ready = true;
                self.credit(WINDOW).await;
                true
            }
            Step::Sent(Ok(())) => {
                self.queue.pop_front();
                self.forwarded += 1;
                if self.forwarded >= WINDOW / 2 {
                    let n = std::mem::take(&mut self.forwarded);
                    self.credit(n).await;
                }
                true
            }
            Step::Ready(Err(event)) | Step::Sent(Err(event)) => {
                self.event(event).await;
                false
            }
            Step::Event(event) => {
                let more = matches!(event, Some(FileEvent::Opened(_) | FileEvent::Data(_)));
                self.event(event).await;
                more
            }
        }
    }

    /// Sends the caller an event of its transfer.
    async fn event(&mut self, event: Option<FileEvent>) {
        self.seq += 1;
        let payload = match event {
            Some(FileEvent::Data(data)) => {
                self.sent += 1;
                frame(OUTPUT, 0, self.seq, &data)
            }
            other => frame(EVENT, 0, self.seq, &json(&other)),
        };
        self.cluster.publish(self.frames.clone(), payload).await;
    }

    /// Gives the caller credit for `n` more pushed frames.
    async fn credit(&mut self, n: u64) {
        self.seq += 1;
        self.cluster.publish(self.frames.clone(), frame(CREDIT, 0, self.seq, &n.to_be_bytes())).await;
    }

    /// Acts on a message from the caller: whether the transfer goes on, or
    /// `Err` for a pushed frame lost or past its credit.
    fn heard(&mut self, msg: Option<async_nats::Message>, transfer: &mut Transfer) -> Result<bool, ()> {
        let Some(msg) = msg else { return Ok(false) };
        self.heard = Instant::now();
        match msg.payload.as_ref() {
            [ACK, n @ ..] => self.acked = acked_now(self.acked, number(n), self.sent),
            [CANCEL, ..] => return Ok(false),
            [START, ..] => transfer.start(),
            [PUSH, end, rest @ ..] => {
                let seq = number(rest);
                let fits = (10..=10 + FILE_CHUNK).contains(&msg.payload.len()) && self.queue.len() < WINDOW as usize;
                if Some(seq) != self.next_in.checked_add(1) || !fits || !self.ready {
                    tracing::warn!("a frame of a file pushed through another relay was lost or came past its credit");
                    return Err(());
                }
                self.next_in = seq;
                let kind = if *end == 1 { FrameKind::FileEnd } else { FrameKind::FileData };
                self.queue.push_back((kind, msg.payload.slice(10..)));
            }
            _ => {}
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &[u8]) -> (u64, Option<FileEvent>) {
        match decode(payload) {
            Some((seq, Heard::Event(event))) => (seq, event),
            _ => panic!("not an event frame"),
        }
    }

    #[test]
    fn transfer_frames_carry_bytes_events_and_credit() {
        let chunk = vec![9u8; FILE_CHUNK];
        let data = frame(OUTPUT, 0, 1, &chunk);
        assert!(data.len() + FRAME_ROOM <= 1024 * 1024, "a chunk's frame fits NATS's default max_payload");
        assert_eq!(event(&data), (1, Some(FileEvent::Data(chunk))));
        let end = frame(EVENT, 0, 2, &json(&Some(FileEvent::End)));
        assert_eq!(event(&end), (2, Some(FileEvent::End)));
        let gone = frame(EVENT, 0, 3, &json(&None::<FileEvent>));
        assert_eq!(event(&gone), (3, None), "the daemon's link went away");
        let Some((4, Heard::Credit(8))) = decode(&frame(CREDIT, 0, 4, &8u64.to_be_bytes())) else {
            panic!("not credit")
        };
        assert!(matches!(decode(&frame(BEAT, 0, 0, &[])), Some((0, Heard::Beat))));
        assert!(decode(b"x").is_none() && decode(&frame(b'?', 0, 5, &[])).is_none());
    }
}
