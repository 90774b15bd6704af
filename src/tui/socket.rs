//! The console's side of the daemon's socket. One task keeps a subscribed
//! connection, sends a snapshot on every (re)connect and forwards events;
//! each request the operator makes runs on a connection of its own, so a
//! slow relay answer never holds up the live view. The UI never awaits the socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::client::{Client, ClientError};
use super::event::{DaemonMsg, Event, Snapshot};
use crate::protocol::control::{self, Op};

/// First wait before reconnecting.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts, so a restarted daemon is noticed quickly.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// Keeps a subscription to the daemon at `socket`, reconnecting with a
/// bounded backoff, until `tx` is closed.
pub async fn watch(socket: PathBuf, tx: mpsc::Sender<Event>) {
    let mut wait = RETRY_MIN;
    loop {
        let error = match session(&socket, &tx, &mut wait).await {
            Ok(()) => return,
            Err(e) => e,
        };
        let down = DaemonMsg::Down { reason: error.to_string() };
        if tx.send(Event::Daemon(down)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// One connection's life: subscribe, snapshot, forward events. `Ok` means the console is closing.
async fn session(socket: &Path, tx: &mpsc::Sender<Event>, wait: &mut Duration) -> Result<(), ClientError> {
    let mut client = Client::connect(socket).await?;
    // Subscribe first: events from here on arrive after the snapshot and bring it up to date.
    client.call(Op::Subscribe).await?;
    let state = read_state(&mut client).await?;
    *wait = RETRY_MIN;
    if tx.send(Event::Daemon(DaemonMsg::Connected(Box::new(state)))).await.is_err() {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            event = client.next_event() => event?,
            _ = tx.closed() => return Ok(()),
        };
        let lagged = matches!(event, control::Event::Lagged { .. });
        if tx.send(Event::Daemon(DaemonMsg::Event(event))).await.is_err() {
            return Ok(());
        }
        if lagged {
            let state = read_state(&mut client).await?;
            if tx.send(Event::Daemon(DaemonMsg::Connected(Box::new(state)))).await.is_err() {
                return Ok(());
            }
        }
    }
}

async fn read_state(client: &mut Client) -> Result<Snapshot, ClientError> {
    Ok(Snapshot {
        status: client.ask_for(Op::Status).await?,
        traffic: client.ask_for(Op::Traffic).await?,
        approvals: client.ask_for(Op::Approvals).await?,
    })
}

/// Sends `op` on a connection of its own; the reply comes back on `tx`.
pub fn request(socket: PathBuf, op: Op, tx: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        let result = async { Client::connect(&socket).await?.ask(op.clone()).await }.await;
        let reply = DaemonMsg::Reply { op, result: result.map_err(|e| e.to_string()) };
        let _ = tx.send(Event::Daemon(reply)).await;
    });
}
