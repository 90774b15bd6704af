//! Download and upload links for MCP clients, so a large file's bytes never
//! pass through a model: `GET`/`PUT /api/v1/files/link/{token}`.
//!
//! A link is a random token, kept only as its SHA-256 and only in memory,
//! bound to one machine and one path, good for one use within its lifetime
//! (1 h by default). A download link holds its pull open (approved, the file
//! hashed, nothing read yet) until it is used or expires; an upload link
//! holds only what the push will be, and the push is approved when it arrives.
//! In a cluster, a link reaching a relay that does not keep it is used through
//! the one that does ([`super::cluster`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::AppState;
use super::access::Caller;
use super::cluster::LinkUse;
use super::error::{ApiError, Reason};
use super::files::{self, PushSpec};
use super::transfer::Transfer;
use crate::protocol::files::FileOpened;

/// What a link stands for.
pub enum Offer {
    /// A pull, opened and waiting for the download to start.
    Download {
        /// What the daemon found.
        opened: FileOpened,
        /// The pull, with no credit yet.
        transfer: Transfer,
    },
    /// A push to be made when the upload arrives.
    Upload {
        /// Who asked for the link: the push is theirs, checked again when it arrives.
        caller: Caller,
        /// The code or alias they named.
        code: String,
        /// Where the file goes.
        path: String,
        /// Its permission bits.
        mode: Option<u32>,
        /// Whether it may replace a file.
        overwrite: bool,
    },
}

/// Links not yet used. Held for a moment per call, never across an `.await`.
#[derive(Default)]
pub struct FileLinks {
    links: Mutex<HashMap<[u8; 32], Kept>>,
}

/// A link not yet used.
struct Kept {
    /// When it stops working.
    expires: Instant,
    /// What it stands for.
    offer: Offer,
    /// Cancelled as the link leaves the map (used, expired, swept), so what
    /// answers for it elsewhere (a cluster's subscription) ends with it.
    gone: CancellationToken,
    /// Cancels `gone` when the link is dropped.
    _gone: DropGuard,
}

/// The hash a link is kept under (and, in a cluster, asked for by).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl FileLinks {
    /// Keeps `offer` for `ttl` and returns its token (shown once).
    pub fn offer(&self, offer: Offer, ttl: Duration) -> String {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut links = self.links.lock().unwrap();
        // Expired links are dropped here, and with them any pull they held open.
        links.retain(|_, kept| kept.expires > now);
        let gone = CancellationToken::new();
        let kept = Kept { expires: now + ttl, offer, _gone: gone.clone().drop_guard(), gone };
        links.insert(token_hash(&token), kept);
        token
    }

    /// The offer behind `token`, once: a used, expired or unknown token gives `None`.
    pub fn take(&self, token: &str) -> Option<Offer> {
        self.take_hashed(&token_hash(token))
    }

    /// The offer kept under `hash`, once, as [`Self::take`].
    pub fn take_hashed(&self, hash: &[u8; 32]) -> Option<Offer> {
        let Kept { expires, offer, .. } = self.links.lock().unwrap().remove(hash)?;
        (expires > Instant::now()).then_some(offer)
    }

    /// Cancelled once the link kept under `hash` is used or expires; `None` when it already was.
    pub fn gone(&self, hash: &[u8; 32]) -> Option<CancellationToken> {
        self.links.lock().unwrap().get(hash).map(|kept| kept.gone.clone())
    }

    /// Drops expired links (their held pulls are cancelled on the machine).
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Offer> = {
            let mut links = self.links.lock().unwrap();
            let gone: Vec<[u8; 32]> = links.iter().filter(|(_, kept)| kept.expires <= now).map(|(k, _)| *k).collect();
            gone.iter().filter_map(|k| links.remove(k)).map(|kept| kept.offer).collect()
        };
        drop(expired);
    }
}

/// The answer for a token that is not (or no longer) a link.
fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        Reason::NotFound,
        "This link was already used, has expired, or never existed: links work once, within an hour. \
         Ask for a new one (call remote_pull or remote_push again).",
    )
}

/// The answer for a link whose keeping relay did not answer in time (or NATS is down).
fn unavailable() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Reason::Internal,
        "The relay that keeps this link did not answer in time. The link may still work: retry in a few seconds.",
    );
    e.retry_after = Some(5);
    e
}

/// The answer for a link of the other kind (now used up too).
fn wrong_kind(upload: bool) -> ApiError {
    let message = if upload {
        "This is an upload link: PUT the file to it (curl -T FILE URL). It is now used up; ask for a new one."
    } else {
        "This is a download link: GET it (curl -o FILE URL). It is now used up; ask for a new one."
    };
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Reason::BadRequest, message)
}

/// Keeps the link `token` answering for the other relays of a cluster until it expires in `ttl`.
pub async fn share(state: &AppState, token: &str, ttl: Duration) {
    if let Some(cluster) = &state.cluster {
        cluster.keep_link(state, token_hash(token), ttl).await;
    }
}

/// Uses the link `token` through the relay of a cluster that keeps it.
async fn kept_elsewhere(state: &AppState, token: &str, push: Option<(u64, Option<String>)>) -> LinkUse {
    match &state.cluster {
        Some(cluster) => cluster.use_link(&token_hash(token), push).await,
        None => LinkUse::Gone(None),
    }
}

/// `GET /api/v1/files/link/{token}`: the file a download link stands for.
pub async fn download(State(state): State<AppState>, Path(token): Path<String>) -> Result<Response, ApiError> {
    let (opened, mut transfer) = match state.file_links.take(&token) {
        Some(Offer::Download { opened, transfer }) => (opened, transfer),
        Some(upload @ Offer::Upload { .. }) => {
            drop(upload);
            return Err(wrong_kind(true));
        }
        None => match kept_elsewhere(&state, &token, None).await {
            LinkUse::Download(opened, transfer) => (opened, transfer),
            LinkUse::Gone(Some(upload)) => return Err(wrong_kind(upload)),
            LinkUse::Refused(e) => return Err(e),
            LinkUse::Unavailable => return Err(unavailable()),
            LinkUse::Upload(..) | LinkUse::Gone(None) => return Err(gone()),
        },
    };
    transfer.start();
    Ok(files::pull_response(&opened, None, transfer))
}

/// `PUT /api/v1/files/link/{token}`: the push an upload link stands for, with the request body.
pub async fn upload(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match state.file_links.take(&token) {
        Some(Offer::Upload { caller, code, path, mode, overwrite }) => {
            let (size, sha256) = files::body_facts(&headers)?;
            let spec = PushSpec { path, size, mode, overwrite, sha256 };
            files::push_body(&state, &caller, &code, spec, body).await
        }
        Some(Offer::Download { .. }) => Err(wrong_kind(false)),
        None => {
            let (size, sha256) = files::body_facts(&headers)?;
            match kept_elsewhere(&state, &token, Some((size, sha256))).await {
                LinkUse::Upload(path, transfer) => files::push_stream(transfer, path, size, body).await,
                LinkUse::Gone(Some(upload)) => Err(wrong_kind(upload)),
                LinkUse::Refused(e) => Err(e),
                LinkUse::Unavailable => Err(unavailable()),
                LinkUse::Download(..) | LinkUse::Gone(None) => Err(gone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload_offer() -> Offer {
        let caller = Caller::anonymous([127, 0, 0, 1].into());
        Offer::Upload { caller, code: "AIC-X".into(), path: "/tmp/x".into(), mode: None, overwrite: false }
    }

    #[test]
    fn a_link_works_once_and_not_after_it_expires() {
        let links = FileLinks::default();
        let token = links.offer(upload_offer(), Duration::from_secs(60));
        assert_eq!(token.len(), 64);
        assert!(links.take(&token).is_some());
        assert!(links.take(&token).is_none(), "a second use");
        let expired = links.offer(upload_offer(), Duration::ZERO);
        assert!(links.take(&expired).is_none(), "an expired link");
        assert!(links.take("not a token").is_none());
    }

    #[test]
    fn what_answers_for_a_link_elsewhere_hears_when_it_is_used_or_swept() {
        let links = FileLinks::default();
        let token = links.offer(upload_offer(), Duration::from_secs(60));
        let gone = links.gone(&token_hash(&token)).expect("a link just made");
        assert!(!gone.is_cancelled());
        assert!(links.take(&token).is_some());
        assert!(gone.is_cancelled(), "the link was used");
        assert!(links.gone(&token_hash(&token)).is_none(), "a used link has nothing to answer for");
        let expired = links.offer(upload_offer(), Duration::ZERO);
        let gone = links.gone(&token_hash(&expired)).unwrap();
        links.sweep();
        assert!(gone.is_cancelled(), "the link expired");
    }
}
