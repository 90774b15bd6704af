//! Outgoing mail (sign-in links) through SMTP, from a background queue: a
//! request only queues its message, so how long it takes tells nothing about
//! whether the address has an account, and a slow mail server slows nobody.

use std::fmt;

use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::mask;

/// Messages waiting to be sent; past it, new ones are dropped (and the page
/// still says "check your mail": the per-address limits keep this rare).
const QUEUE: usize = 256;

/// Where mail goes out, from `--smtp-url` and `--mail-from`.
#[derive(Clone)]
pub struct MailConfig {
    /// `smtp://user:pass@host:port` (add `?tls=required` for STARTTLS) or
    /// `smtps://…`; it holds a password, so it is never printed.
    pub smtp_url: String,
    /// The sender, e.g. `aic relay <relay@example.com>`.
    pub from: String,
}

impl fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailConfig").field("smtp_url", &"(hidden)").field("from", &self.from).finish()
    }
}

/// One message to send.
struct Outgoing {
    to: String,
    subject: String,
    body: String,
}

/// The queue's sending end; without SMTP configured it sends nothing.
#[derive(Clone, Default)]
pub struct Mailer {
    queue: Option<mpsc::Sender<Outgoing>>,
}

impl Mailer {
    /// Starts the sending task for `config` (none: mail is off), until `shutdown`.
    pub fn start(config: Option<&MailConfig>, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let Some(config) = config else { return Ok(Self::default()) };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .context("--smtp-url is not a usable SMTP URL; give one like smtps://user:password@mail.example.com:465")?
            .build();
        let from: lettre::message::Mailbox = config
            .from
            .parse()
            .with_context(|| format!("--mail-from {:?} is not an address like relay@example.com", config.from))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_all(transport, from, rx, shutdown));
        Ok(Self { queue: Some(tx) })
    }

    /// Whether mail goes out at all.
    pub fn configured(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues a plain-text message; false if mail is off or the queue is full.
    pub fn send(&self, to: &str, subject: &str, body: String) -> bool {
        let Some(queue) = &self.queue else { return false };
        let queued = queue.try_send(Outgoing { to: to.to_owned(), subject: subject.to_owned(), body }).is_ok();
        if !queued {
            tracing::warn!(to = %mask::email(to), "the mail queue is full; a sign-in message was dropped");
        }
        queued
    }
}

/// Sends queued messages one by one. Failures are logged with the address
/// masked, never with the message (it holds a sign-in link).
async fn send_all(
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    mut rx: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = shutdown.cancelled() => None,
        };
        let Some(mail) = next else { return };
        let to = mask::email(&mail.to);
        let message = mail.to.parse().map_err(anyhow::Error::from).and_then(|rcpt| {
            Message::builder()
                .from(from.clone())
                .to(rcpt)
                .subject(mail.subject)
                .header(ContentType::TEXT_PLAIN)
                .body(mail.body)
                .map_err(anyhow::Error::from)
        });
        let sent = match message {
            Ok(message) => transport.send(message).await.map(drop).map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => tracing::info!(%to, "sign-in mail sent"),
            Err(e) => tracing::warn!(%to, "sending sign-in mail failed: {e}"),
        }
    }
}
