//! What the relay keeps per MCP session besides rmcp's own state: the calls
//! running in it, so closing the session kills their commands at once, and
//! which client address opened it, so one address cannot fill the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long closing a session waits for its cancelled calls to hand back
/// their answers; they are killed at once, so this is only a bound.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The calls running in one session.
struct Running {
    /// Cancelled when the session is closed; every call in it watches it.
    closed: CancellationToken,
    /// How many calls are running; the entry goes when none are.
    count: watch::Sender<usize>,
    /// The JSON-RPC ids of the running calls, with the serial of their [`Call`].
    requests: Vec<(u64, serde_json::Value)>,
}

/// Sessions' running calls and owners; cheap to clone.
///
/// The maps use a std `Mutex`: every critical section is a few map
/// operations with no `.await` inside.
#[derive(Clone, Default)]
pub struct Sessions {
    running: Arc<Mutex<HashMap<Arc<str>, Running>>>,
    /// Numbers the calls, to find each one's request id again.
    serial: Arc<std::sync::atomic::AtomicU64>,
    /// Session ids by the client network that opened them (IPv4 address or IPv6 /64).
    owners: Arc<Mutex<HashMap<IpAddr, Vec<Arc<str>>>>>,
}

/// One running call; dropping it says the call has ended.
pub struct Call {
    sessions: Sessions,
    id: Arc<str>,
    serial: u64,
    /// Cancelled when the call's session is closed.
    pub closed: CancellationToken,
}

impl Sessions {
    /// Registers call `request` (its JSON-RPC id) in session `id`.
    pub fn enter(&self, id: &str, request: serde_json::Value) -> Call {
        let serial = self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut running = self.running.lock().unwrap();
        let entry = running.entry(Arc::from(id)).or_insert_with(|| Running {
            closed: CancellationToken::new(),
            count: watch::Sender::new(0),
            requests: Vec::new(),
        });
        entry.count.send_modify(|n| *n += 1);
        entry.requests.push((serial, request));
        Call { sessions: self.clone(), id: Arc::from(id), serial, closed: entry.closed.clone() }
    }

    /// The JSON-RPC ids of the calls running in session `id`.
    pub fn requests(&self, id: &str) -> Vec<serde_json::Value> {
        let running = self.running.lock().unwrap();
        running.get(id).map(|r| r.requests.iter().map(|(_, request)| request.clone()).collect()).unwrap_or_default()
    }

    /// Waits (a bounded time) until no call runs in session `id`.
    async fn settle(&self, id: &str) {
        let Some(mut count) = self.running.lock().unwrap().get(id).map(|r| r.count.subscribe()) else { return };
        // An error means the entry is gone: no call is left.
        let _ = tokio::time::timeout(CLOSE_WAIT, count.wait_for(|n| *n == 0)).await;
    }

    /// Cancels every call still running in session `id` (their commands are
    /// killed as they end) and waits until they have returned.
    pub async fn close(&self, id: &str) {
        if let Some(entry) = self.running.lock().unwrap().get(id) {
            entry.closed.cancel();
        }
        self.settle(id).await;
    }

    /// A place for one more session of `client`, if it holds fewer than `cap`
    /// for which `live` is true (places still being filled count too). The
    /// place is taken at once, so requests racing each other cannot overshoot.
    pub fn reserve(&self, client: IpAddr, cap: usize, live: impl Fn(&str) -> bool) -> Option<Slot> {
        let mut owners = self.owners.lock().unwrap();
        let ids = owners.entry(client).or_default();
        ids.retain(|id| id.starts_with(PENDING) || live(id));
        if ids.len() >= cap {
            if ids.is_empty() {
                owners.remove(&client);
            }
            return None;
        }
        let serial = self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key: Arc<str> = Arc::from(format!("{PENDING}{serial}"));
        ids.push(Arc::clone(&key));
        Some(Slot { sessions: self.clone(), client, key })
    }

    /// Forgets clients whose sessions have all ended, once the table is large.
    fn prune(owners: &mut HashMap<IpAddr, Vec<Arc<str>>>, live: impl Fn(&str) -> bool) {
        if owners.len() >= super::MAX_SESSIONS {
            owners.retain(|_, ids| {
                ids.retain(|id| id.starts_with(PENDING) || live(id));
                !ids.is_empty()
            });
        }
    }
}

/// How a place reserved for a session being opened is named until it is filled.
const PENDING: &str = "pending:";

/// A place taken for a session being opened; [`Slot::fill`] puts the
/// session's id in it, and dropping it unfilled gives it back.
pub struct Slot {
    sessions: Sessions,
    client: IpAddr,
    key: Arc<str>,
}

impl Slot {
    /// The session that opened in this place (`None`: none did).
    pub fn fill(self, id: Option<&str>, live: impl Fn(&str) -> bool) {
        let Some(id) = id else { return };
        let mut owners = self.sessions.owners.lock().unwrap();
        if let Some(ids) = owners.get_mut(&self.client)
            && let Some(place) = ids.iter_mut().find(|k| **k == self.key)
        {
            *place = Arc::from(id);
        }
        Sessions::prune(&mut owners, live);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut owners = self.sessions.owners.lock().unwrap();
        let Some(ids) = owners.get_mut(&self.client) else { return };
        ids.retain(|k| *k != self.key);
        if ids.is_empty() {
            owners.remove(&self.client);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut running = self.sessions.running.lock().unwrap();
        let Some(entry) = running.get_mut(&self.id) else { return };
        entry.requests.retain(|(serial, _)| *serial != self.serial);
        entry.count.send_modify(|n| *n = n.saturating_sub(1));
        if *entry.count.borrow() == 0 {
            running.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_a_session_cancels_its_calls_and_waits_for_them() {
        let sessions = Sessions::default();
        let call = sessions.enter("a", 7.into());
        let other = sessions.enter("b", 7.into());
        assert_eq!(sessions.requests("a"), [serde_json::json!(7)]);
        let closed = call.closed.clone();
        let ended = tokio::spawn(async move {
            closed.cancelled().await;
            drop(call);
        });
        sessions.close("a").await;
        assert!(ended.is_finished() || ended.await.is_ok());
        assert!(sessions.running.lock().unwrap().get("a").is_none(), "a's entry is gone once its call ended");
        assert!(!other.closed.is_cancelled(), "another session's call runs on");
        sessions.close("no-such-session").await;
    }

    #[test]
    fn each_client_opens_at_most_its_share_even_while_places_fill() {
        let sessions = Sessions::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let all_live = |_: &str| true;
        let first = sessions.reserve(a, 2, all_live).unwrap();
        let second = sessions.reserve(a, 2, all_live).unwrap();
        assert!(sessions.reserve(a, 2, all_live).is_none(), "two places being filled count");
        first.fill(Some("1"), all_live);
        drop(second); // no session came of it: the place is free again
        let again = sessions.reserve(a, 2, all_live).unwrap();
        again.fill(Some("2"), all_live);
        assert!(sessions.reserve(a, 2, all_live).is_none(), "a holds two");
        assert!(sessions.reserve(b, 2, all_live).is_some(), "b is counted apart");
        assert!(sessions.reserve(a, 2, |id| id != "1").is_some(), "a closed one");
        assert!(sessions.reserve(b, 0, all_live).is_none());
    }
}
