//! Which machines the relays of a cluster hold, for status and listing on
//! every relay: a JetStream KV bucket ([`BUCKET`], in memory) where the relay
//! holding a machine's link keeps an entry, refreshed every [`REFRESH`] while
//! the link lasts and deleted when it leaves; the entries of a relay that died
//! expire [`MAX_AGE`] after its last refresh.
//!
//! A key is a hash of the code's keyed hash (the hex part of the machine's
//! NATS subject), never the code; a value is the holding relay's instance id,
//! never a command or its output.
//!
//! The bucket's stream is made here, as the KV convention has it, rather than
//! with async-nats' `create_key_value`: that one first reads the account's
//! JetStream details, and cannot parse those nats-server 2.9 (Debian 12's)
//! sends, which lack `reserved_memory` ("missing field").

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::{self, kv, stream};

use super::keys::Digest;

/// The KV bucket's name (its stream is `KV_aic_presence`).
pub const BUCKET: &str = "aic_presence";
/// How long an entry lasts without a refresh: a relay killed outright stops
/// counting as holding its machines this long after its last refresh.
pub const MAX_AGE: Duration = Duration::from_secs(15);
/// How often the holding relay refreshes an entry (three times per [`MAX_AGE`]).
pub const REFRESH: Duration = Duration::from_secs(5);

/// This relay's handle on the presence bucket.
pub struct Presence {
    /// JetStream, to make the bucket's stream again if NATS lost it (it is in
    /// memory, so a restarted nats-server has none).
    js: jetstream::Context,
    /// The bucket.
    kv: kv::Store,
    /// Whether a failed read has been logged (once per outage: status then asks the holding relay).
    said_unreadable: AtomicBool,
    /// Whether a failed write has been logged (once per outage, not once per
    /// link and refresh: thousands of links refresh every few seconds).
    said_unwritable: AtomicBool,
}

/// The bucket's stream as the KV convention has it: one message per key, kept
/// [`MAX_AGE`], in memory; making it again with the same settings changes nothing.
fn stream_config() -> stream::Config {
    stream::Config {
        name: format!("KV_{BUCKET}"),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: MAX_AGE,
        storage: stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..stream::Config::default()
    }
}

impl Presence {
    /// The bucket, made if no relay has made it yet; the error says why there
    /// is none (typically a nats-server without `-js`).
    pub async fn open(client: &Client) -> Result<Self, String> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream_config()).await.map_err(|e| e.to_string())?;
        let kv = js.get_key_value(BUCKET).await.map_err(|e| e.to_string())?;
        Ok(Self { js, kv, said_unreadable: AtomicBool::new(false), said_unwritable: AtomicBool::new(false) })
    }

    /// Notes that `relay` holds the machine behind `key`: the entry's revision,
    /// or `None` (logged) if NATS would not take it.
    pub async fn note(&self, key: &str, relay: &str) -> Option<u64> {
        let put = || self.kv.put(key, relay.to_owned().into_bytes().into());
        let failed = match put().await {
            Ok(revision) => return self.wrote(revision),
            Err(e) => e,
        };
        // A restarted nats-server lost the in-memory bucket: make it again, once.
        if let Err(e) = self.js.get_or_create_stream(stream_config()).await {
            self.unwritable(format_args!("{failed}; making the bucket again: {e}"));
            return None;
        }
        match put().await {
            Ok(revision) => self.wrote(revision),
            Err(e) => {
                self.unwritable(format_args!("{e}"));
                None
            }
        }
    }

    /// A write went through: the next failure is a new outage, logged again.
    fn wrote(&self, revision: u64) -> Option<u64> {
        self.said_unwritable.store(false, Ordering::Relaxed);
        Some(revision)
    }

    /// Logs a failed write, the first of an outage only.
    fn unwritable(&self, why: std::fmt::Arguments) {
        if !self.said_unwritable.swap(true, Ordering::Relaxed) {
            tracing::warn!("noting presence in NATS KV: {why}; entries expire unrefreshed while it fails");
        }
    }

    /// Deletes the entry behind `key` if it is still the one this relay wrote
    /// at `revision`: a newer one, from a relay the machine moved to, stays.
    pub async fn forget(&self, key: &str, revision: u64) {
        // An error here is a newer entry (kept, rightly) or NATS being away
        // (the entry then expires by its age).
        let _ = self.kv.delete_expect_revision(key, Some(revision)).await;
    }

    /// Whether some relay holds the machine behind `key`; `None` when the
    /// bucket cannot be read right now (logged the first time).
    pub async fn held(&self, key: &str) -> Option<bool> {
        match self.kv.get(key).await {
            Ok(entry) => {
                self.said_unreadable.store(false, Ordering::Relaxed);
                Some(entry.is_some())
            }
            Err(e) => {
                if !self.said_unreadable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "reading presence from NATS KV: {e}; asking the holding relay instead while it fails"
                    );
                }
                None
            }
        }
    }
}

/// A machine's key in the bucket: the hex part of its NATS subject.
pub fn key(code_hash: &Digest) -> String {
    let subject = super::cluster::subject(code_hash);
    subject.trim_start_matches("aic.agent.").to_owned()
}
