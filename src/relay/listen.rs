//! The accept loop, with the limits the HTTP framework leaves to us: how long
//! a client may take to send its headers or sit idle between requests, how
//! many connections the relay holds at once, and how many one address holds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::limit::Proxies;
use super::tls::Tls;

/// How long to wait before accepting again after `accept` failed (out of
/// file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one client, and all of them together, may hold open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time to send a request's headers, and to start the next request on a
    /// kept-alive connection; past it the connection is closed.
    pub header_timeout: Duration,
    /// Connections held at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections held at once from one address (a trusted proxy is not
    /// counted); more are answered 429 and closed.
    pub max_per_ip: usize,
    /// How long a connection may take less than [`WRITE_PACE`] bytes of
    /// what the relay waits to write to it; past it the connection is
    /// closed. A caller that stops reading (or reads a little now and then)
    /// would otherwise hold its command's output in the relay for as long as
    /// its connection stays open.
    pub write_stall: Duration,
}

/// [`ConnLimits::write_stall`] by default: far longer than any client that
/// reads takes, shorter than a relay should hold output for one that does not.
pub const WRITE_STALL: Duration = Duration::from_secs(60);

/// Bytes a connection the relay waits to write to must take within
/// [`ConnLimits::write_stall`] (about 1 KiB/s at the default): taking a
/// packet a minute kept a 1 MiB window of output held for hours.
pub const WRITE_PACE: usize = 64 * 1024;

/// Bytes of a request body that must come within the header timeout while
/// the relay waits for them (about 550 B/s at the default 30 s): a byte
/// every 29 s held a connection for as long as its Content-Length.
pub const BODY_PACE: usize = 16 * 1024;

/// Counts connections, overall and per address.
struct Gate {
    limits: ConnLimits,
    proxies: Proxies,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Whether the "limit reached" line was logged since the relay was last below it.
    full_logged: bool,
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TurnedAway {
    Full,
    PerIp,
}

impl Gate {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, TurnedAway> {
        let mut counts = self.counts.lock().unwrap();
        if counts.total >= self.limits.max_connections {
            if !counts.full_logged {
                counts.full_logged = true;
                tracing::warn!(
                    "connection limit reached: {} connections are open, the most allowed; new ones are refused \
                     until some close (raise it with --max-connections, and LimitNOFILE with it)",
                    self.limits.max_connections
                );
            }
            return Err(TurnedAway::Full);
        }
        let counted = !self.proxies.trusted(ip);
        if counted && counts.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip {
            return Err(TurnedAway::PerIp);
        }
        counts.total += 1;
        if counted {
            *counts.per_ip.entry(ip).or_default() += 1;
        }
        Ok(Slot { gate: Arc::clone(self), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap();
        counts.total -= 1;
        if counts.total < self.gate.limits.max_connections {
            counts.full_logged = false;
        }
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections on `listener` and serves `app` on each (over TLS
/// with `tls`) until `shutdown`; then lets requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    proxies: Proxies,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    let gate = Arc::new(Gate { limits, proxies, counts: Mutex::default() });
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match gate.admit(peer.ip()) {
            Ok(slot) => {
                tasks.spawn(connection(tcp, peer, slot, app.clone(), tls.clone(), shutdown.clone()));
            }
            Err(why) => turn_away(tcp, why),
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Serves one connection, over TLS when the relay has a certificate.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) {
    // Requests and responses are small and written in pieces: without this,
    // Nagle plus delayed ACKs adds ~40 ms to a round trip.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let timeout = slot.gate.limits.header_timeout;
    match tls {
        None => http(Held::new(tcp, slot), peer, app, timeout, shutdown).await,
        // The handshake gets the same time as the headers would.
        Some(tls) => match tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await {
            Ok(Ok(stream)) => http(Held::new(stream, slot), peer, app, timeout, shutdown).await,
            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%peer, "TLS handshake took longer than {timeout:?}"),
        },
    }
}

/// A connection's stream, holding its place in the counts until it is
/// dropped: for a connection upgraded to an agent's WebSocket that is when
/// the link closes (the HTTP connection's task ends at the upgrade). Writes
/// that stay blocked, or move less than [`WRITE_PACE`] bytes, for the limits'
/// `write_stall` fail.
struct Held<I> {
    io: I,
    /// The connection's place in the counts, freed with the stream.
    _slot: Slot,
    /// How long writes have been blocked.
    stall: Stall,
}

impl<I> Held<I> {
    fn new(io: I, slot: Slot) -> Self {
        let stall = Stall::new(slot.gate.limits.write_stall, WRITE_PACE);
        Self { io, _slot: slot, stall }
    }

    /// Passes on a write's outcome (`moved`: the bytes it took); writes
    /// blocked past the limit fail.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
        moved: impl Fn(&T) -> usize,
    ) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(done) = &polled {
            self.stall.progressed(done.as_ref().map_or(usize::MAX, moved));
            return polled;
        }
        if !self.stall.expired(cx) {
            return Poll::Pending;
        }
        let message = format!(
            "the client took less than {} bytes of what the relay wrote in {:?}",
            self.stall.pace, self.stall.limit
        );
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, message)))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Held<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Held<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.watch(cx, polled, |&n| n)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled, |&n| n)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled, |()| 0)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled, |()| usize::MAX)
    }
}

/// Serves HTTP on one connection, with upgrades (the agent WebSocket).
async fn http<I>(io: I, peer: SocketAddr, app: Router, header_timeout: Duration, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.map(|body| axum::body::Body::new(Paced { body, stall: Stall::new(header_timeout, BODY_PACE) }))
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// A request's body, which must keep coming: a client that sends less than
/// [`BODY_PACE`] bytes of it in the header timeout (while the relay waits for
/// it) gets an error for it, not a connection held for as long as it trickles.
struct Paced {
    body: Incoming,
    /// How long the relay has waited for the next part.
    stall: Stall,
}

/// How long something has been blocked, against a limit: from its first
/// block until `pace` bytes have moved. The timer is made at the first
/// block: most connections and bodies never have one.
struct Stall {
    limit: Duration,
    /// Bytes that must move within `limit` of the first block.
    pace: usize,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` counts the current block.
    armed: bool,
    /// Bytes moved since `timer` was armed.
    moved: usize,
}

impl Stall {
    fn new(limit: Duration, pace: usize) -> Self {
        Self { limit, pace, timer: None, armed: false, moved: 0 }
    }

    /// The blocked operation moved `bytes`: once `pace` have moved since the
    /// block began, a later block counts afresh.
    fn progressed(&mut self, bytes: usize) {
        self.moved = self.moved.saturating_add(bytes);
        if self.moved >= self.pace || !self.armed {
            (self.armed, self.moved) = (false, 0);
        }
    }

    /// The operation is blocked: whether for longer than the limit. If not,
    /// `cx` is woken when it would be.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl hyper::body::Body for Paced {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            let data = |f: &hyper::body::Frame<Self::Data>| f.data_ref().map_or(usize::MAX, |d| d.len());
            this.stall.progressed(match &frame {
                Some(Ok(f)) => data(f),
                _ => usize::MAX,
            });
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !this.stall.expired(cx) {
            return Poll::Pending;
        }
        let (limit, moved, pace) = (this.stall.limit, this.stall.moved, this.stall.pace);
        let why = match moved {
            0 => format!("no part of the request body came for {limit:?}"),
            _ => format!("the request body came too slowly: {moved} bytes in {limit:?}, fewer than {pace}"),
        };
        Poll::Ready(Some(Err(why.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection over a limit with one short response and closes it.
/// The write is not waited for: a client that does not read gets nothing.
fn turn_away(tcp: TcpStream, why: TurnedAway) {
    let (status, reason, message) = match why {
        TurnedAway::Full => (
            "503 Service Unavailable",
            "rate_limited",
            "The relay holds as many connections as it allows; retry in a few seconds.",
        ),
        TurnedAway::PerIp => (
            "429 Too Many Requests",
            "rate_limited",
            "Too many connections from your address; close some (reuse one connection), then retry.",
        ),
    };
    let body = serde_json::json!({"ok": false, "error": message, "reason": reason}).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One look at whether `stall` has expired.
    async fn expired(stall: &mut Stall) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(stall.expired(cx))).await
    }

    #[tokio::test]
    async fn a_trickle_does_not_stop_the_stall_clock_and_the_pace_does() {
        let mut stall = Stall::new(Duration::from_millis(200), 1000);
        assert!(!expired(&mut stall).await, "a block starts the clock");
        stall.progressed(1000);
        assert!(!expired(&mut stall).await, "the pace met, a new block starts afresh");
        // 10 bytes every 20 ms: the limit passes with far fewer than 1000 moved.
        let mut ticks = 0;
        while !expired(&mut stall).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stall.progressed(10);
            ticks += 1;
            assert!(ticks < 1000, "still not expired after {ticks} trickles");
        }
    }
}
