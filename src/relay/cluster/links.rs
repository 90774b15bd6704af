//! One-use file links in a cluster: a link is kept in the memory of the
//! relay that made it, which answers for it on a subject derived from its
//! token's hash (never the token) until it expires. A relay reached with a
//! link it does not keep asks there: the keeper takes the link and relays
//! its transfer (a download's held pull, or an upload's push, opened by the
//! keeper for the caller who asked for the link) as any transfer through the
//! cluster goes ([`super::files`]). No responders means no relay keeps it; no
//! answer in time (or NATS down) is a 503 the user may retry. The keeper stops
//! answering once the link is used, here or elsewhere, or expires.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subscriber;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

use super::{ASK_TIMEOUT, Cluster, json, nats_down};
use crate::protocol::files::FileOpened;
use crate::relay::AppState;
use crate::relay::error::{ApiError, Reason};
use crate::relay::files::{self, PushSpec};
use crate::relay::links::Offer;
use crate::relay::transfer::Transfer;

/// How long a relay waits for the keeper of a link: longer than the keeper
/// may spend opening its transfer ([`ASK_TIMEOUT`]) after taking the link, so
/// a slow open is not reported as a link used up when it is spent.
const LINK_ASK_TIMEOUT: Duration = Duration::from_secs(2 * ASK_TIMEOUT.as_secs());

/// A link's subject: a hash of its token's hash.
fn subject(token_hash: &[u8; 32]) -> String {
    let digest = sha2::Sha256::new().chain_update(b"aic nats link\0").chain_update(token_hash).finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("aic.link.{hex}")
}

/// A relay reached with a link asks its keeper for it.
#[derive(Serialize, Deserialize)]
struct LinkAsk {
    /// An upload's size and checksum from the request's headers; `None` for a download.
    push: Option<(u64, Option<String>)>,
    /// The asking relay's inbox for the transfer's frames.
    frames: String,
}

/// A refusal as it crosses NATS.
#[derive(Serialize, Deserialize)]
struct Refusal {
    /// HTTP status.
    status: u16,
    /// Machine word.
    reason: Reason,
    /// What to do, in words.
    message: String,
    /// Seconds for `Retry-After`.
    retry_after: Option<u64>,
}

/// The keeper's answer.
#[derive(Serialize, Deserialize)]
enum LinkAnswer {
    /// The download's file; its bytes follow on the asker's inbox, acknowledged on `acks`.
    Download {
        /// What the daemon found when the link was made.
        opened: FileOpened,
        /// The keeper's inbox for acknowledgements.
        acks: String,
    },
    /// The upload's push is open at `path`; send its bytes to `acks` within the credit given.
    Upload {
        /// Where the file goes.
        path: String,
        /// The keeper's inbox for the pushed frames.
        acks: String,
    },
    /// Used up, or of the other kind (a GET of an upload link: used up now too).
    Gone {
        /// The link was an upload link.
        upload: Option<bool>,
    },
    /// The upload's push was refused.
    Refused(Refusal),
}

/// A link used through the relay that keeps it.
pub enum LinkUse {
    /// A download: what the daemon found, and the pull.
    Download(FileOpened, Transfer),
    /// An upload: the path, and the push, waiting for its bytes.
    Upload(String, Transfer),
    /// No relay keeps it (used, expired, never made): `Some(upload)` when it was of the other kind.
    Gone(Option<bool>),
    /// The keeper refused the upload's push.
    Refused(ApiError),
    /// The keeper did not answer in time, or NATS is down: the link may still work, later.
    Unavailable,
}

impl Cluster {
    /// Answers for the link `token_hash` of `state`'s links until it is used or expires in `ttl`.
    pub async fn keep_link(self: &Arc<Self>, state: &AppState, token_hash: [u8; 32], ttl: Duration) {
        let Some(gone) = state.file_links.gone(&token_hash) else { return };
        let asks = match self.client.subscribe(subject(&token_hash)).await {
            Ok(asks) => asks,
            Err(e) => return tracing::warn!("the link works on this relay only: subscribing on NATS: {e}"),
        };
        let _ = self.client.flush().await;
        tokio::spawn(Arc::clone(self).lend(state.clone(), token_hash, asks, (ttl, gone)));
    }

    /// Serves the asks for one link until it is taken (here or through
    /// another relay) or expires, ignoring asks that make no sense.
    async fn lend(
        self: Arc<Self>,
        state: AppState,
        token_hash: [u8; 32],
        mut asks: Subscriber,
        (ttl, gone): (Duration, CancellationToken),
    ) {
        let expired = tokio::time::sleep(ttl);
        tokio::pin!(expired);
        let (reply, ask) = loop {
            let msg = tokio::select! {
                () = &mut expired => return,
                () = gone.cancelled() => return,
                () = state.shutdown.cancelled() => return,
                msg = asks.next() => msg,
            };
            let Some(msg) = msg else { return };
            match (msg.reply, serde_json::from_slice::<LinkAsk>(&msg.payload)) {
                (Some(reply), Ok(ask)) => break (reply.to_string(), ask),
                _ => tracing::warn!("an ask for a file link on NATS made no sense; ignored"),
            }
        };
        drop(asks);
        let offer = state.file_links.take_hashed(&token_hash);
        let inbox = self.client.new_inbox();
        let Ok(inbound) = self.client.subscribe(inbox.clone()).await else { return };
        let (answer, transfer) = open_offer(&state, offer, ask.push, inbox).await;
        self.publish(reply, json(&answer)).await;
        if let Some(transfer) = transfer {
            let push = matches!(answer, LinkAnswer::Upload { .. });
            self.relay_to(ask.frames, push, transfer, inbound).await;
        }
    }

    /// Uses the link `token_hash` that another relay keeps; an upload's size and checksum in `push`.
    pub async fn use_link(&self, token_hash: &[u8; 32], push: Option<(u64, Option<String>)>) -> LinkUse {
        let frames_subject = self.client.new_inbox();
        let Ok(frames) = self.client.subscribe(frames_subject.clone()).await.map_err(|e| nats_down(&e)) else {
            return LinkUse::Unavailable;
        };
        let ask = json(&LinkAsk { push, frames: frames_subject });
        // The keeper may spend up to ASK_TIMEOUT opening the transfer once it took the link.
        let request = async_nats::Request::new().payload(ask.into()).timeout(Some(LINK_ASK_TIMEOUT));
        let reply = match self.client.send_request(subject(token_hash), request).await {
            Ok(reply) => reply,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => return LinkUse::Gone(None),
            Err(e) => {
                tracing::warn!("asking the relay that keeps a file link: {e}");
                return LinkUse::Unavailable;
            }
        };
        match serde_json::from_slice::<LinkAnswer>(&reply.payload) {
            Ok(LinkAnswer::Download { opened, acks }) => {
                let id = opened.id;
                LinkUse::Download(opened, self.remote(id, frames, acks))
            }
            Ok(LinkAnswer::Upload { path, acks }) => {
                LinkUse::Upload(path, self.remote(uuid::Uuid::nil(), frames, acks))
            }
            Ok(LinkAnswer::Refused(r)) => LinkUse::Refused(r.into()),
            Ok(LinkAnswer::Gone { upload }) => LinkUse::Gone(upload),
            Err(_) => LinkUse::Unavailable,
        }
    }
}

/// What the keeper answers for `offer`, and the transfer it relays.
async fn open_offer(
    state: &AppState,
    offer: Option<Offer>,
    push: Option<(u64, Option<String>)>,
    acks: String,
) -> (LinkAnswer, Option<Transfer>) {
    match (offer, push) {
        (Some(Offer::Download { opened, transfer }), None) => (LinkAnswer::Download { opened, acks }, Some(transfer)),
        (Some(Offer::Upload { caller, code, path, mode, overwrite }), Some((size, sha256))) => {
            let spec = PushSpec { path: path.clone(), size, mode, overwrite, sha256 };
            match files::begin_push(state, &caller, &code, &spec).await {
                Ok(transfer) => (LinkAnswer::Upload { path, acks }, Some(transfer)),
                Err(e) => (LinkAnswer::Refused(e.into()), None),
            }
        }
        (Some(Offer::Download { .. }), Some(_)) => (LinkAnswer::Gone { upload: Some(false) }, None),
        (Some(Offer::Upload { .. }), None) => (LinkAnswer::Gone { upload: Some(true) }, None),
        (None, _) => (LinkAnswer::Gone { upload: None }, None),
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self { status: e.status.as_u16(), reason: e.reason, message: e.message, retry_after: e.retry_after }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = axum::http::StatusCode::from_u16(r.status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
        let mut e = ApiError::new(status, r.reason, r.message);
        e.retry_after = r.retry_after;
        e
    }
}
