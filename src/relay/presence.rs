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
    /// Failed reads, logged once per outage (status then asks the holding relay).
    unreadable: Outage,
    /// Failed writes, logged once per outage, not once per link and refresh:
    /// thousands of links refresh every few seconds.
    unwritable: Outage,
}

/// A failure logged once per outage rather than once per failed call; a call
/// that goes through ends the outage, so the next failure is logged again.
#[derive(Default)]
struct Outage {
    /// Whether this outage has been logged.
    said: AtomicBool,
}

impl Outage {
    /// A call failed: logs `warning` if this is the first failure of an outage.
    fn failed(&self, warning: std::fmt::Arguments) {
        if !self.said.swap(true, Ordering::Relaxed) {
            tracing::warn!("{warning}");
        }
    }

    /// A call went through: the outage, if any, is over.
    fn over(&self) {
        self.said.store(false, Ordering::Relaxed);
    }
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
        Ok(Self { js, kv, unreadable: Outage::default(), unwritable: Outage::default() })
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
        self.unwritable.over();
        Some(revision)
    }

    /// Logs a failed write, the first of an outage only.
    fn unwritable(&self, why: std::fmt::Arguments) {
        self.unwritable
            .failed(format_args!("noting presence in NATS KV: {why}; entries expire unrefreshed while it fails"));
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
                self.unreadable.over();
                Some(entry.is_some())
            }
            Err(e) => {
                self.unreadable.failed(format_args!(
                    "reading presence from NATS KV: {e}; asking the holding relay instead while it fails"
                ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the relay's log says, as its operator reads it.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outage_is_logged_once_and_a_later_outage_again() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let writes = Outage::default();
        tracing::subscriber::with_default(subscriber, || {
            for n in 1..=3 {
                writes.failed(format_args!("write {n} failed"));
            }
            writes.over();
            writes.failed(format_args!("write 4 failed"));
            writes.failed(format_args!("write 5 failed"));
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("WARN") && lines[0].ends_with("write 1 failed"), "{text}");
        assert!(lines[1].contains("WARN") && lines[1].ends_with("write 4 failed"), "{text}");
    }
}
