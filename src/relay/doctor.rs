//! `aic-relay doctor`: the data dir, the secret, the database, the listen
//! address and the clock, checked the way an operator would by hand (the
//! config is checked by the binary before it gets here).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::keys::SECRET_FILE;
use super::presence::{self, Presence};
use super::store::DB_FILE;
use crate::doctor::{self, Check, Problem, Report};

/// Where a relay of a cluster keeps its store and routes its commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shared<'a> {
    /// `--database-url`: PostgreSQL instead of the SQLite file.
    pub database_url: Option<&'a str>,
    /// `--nats-url`.
    pub nats_url: Option<&'a str>,
}

/// Runs every check after the config's, adding a line each to `report`.
/// `secret_given`: the secret comes from `--secret`/`AIC_RELAY_SECRET`, not the file.
pub async fn run<W: Write>(
    data_dir: &Path,
    shared: Shared<'_>,
    listen: SocketAddr,
    secret_given: bool,
    report: &mut Report<W>,
) {
    let dir = doctor::private(data_dir, false)
        .map(|d| d.unwrap_or_else(|| format!("{} not made yet (made at first start)", data_dir.display())));
    report.add("data dir", dir);
    let secret = if secret_given {
        Ok(Some("from AIC_RELAY_SECRET or --secret".into()))
    } else {
        doctor::private(&data_dir.join(SECRET_FILE), false)
    };
    report.add("secret", secret.map(|d| d.unwrap_or_else(|| "not made yet (made at first start)".into())));
    report.add("database", database(data_dir, shared.database_url).await);
    if let Some(url) = shared.nats_url {
        report.add("nats", nats(url).await);
    }
    report.add("listen", listen_address(listen).await);
    report.add("clock", doctor::clock(None, Duration::ZERO));
}

/// The SQLite file in the data dir, or the PostgreSQL at `url`.
async fn database(data_dir: &Path, url: Option<&str>) -> Check {
    let Some(url) = url else {
        let db = doctor::private(&data_dir.join(DB_FILE), false);
        return db.map(|d| d.unwrap_or_else(|| "not made yet (made at first start)".into()));
    };
    match super::store::Store::ping(url).await {
        Ok(shown) => Ok(format!("PostgreSQL at {shown} answers")),
        Err(e) => {
            Err(Problem::new(format!("{e:#}"), "check --database-url, and that PostgreSQL runs and lets this user in"))
        }
    }
}

/// The NATS server at `url` takes a connection and has JetStream, for the presence bucket.
async fn nats(url: &str) -> Check {
    // A URL with credentials is not repeated.
    let shown = if url.contains('@') { "the NATS server" } else { url };
    let fix = "check --nats-url, and that nats-server runs there";
    let client = match tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(Problem::new(format!("cannot connect to {shown}: {e}"), fix)),
        Err(_) => return Err(Problem::new(format!("{shown} did not answer within 5 s"), fix)),
    };
    let no_presence = |why: String| {
        let fix = "run nats-server with -js (JetStream); without it, status and listing ask the holding relay";
        Err(Problem::new(format!("{shown} answers but keeps no presence bucket: {why}"), fix))
    };
    match tokio::time::timeout(Duration::from_secs(5), Presence::open(&client)).await {
        Ok(Ok(_)) => Ok(format!("{shown} answers, with JetStream (presence bucket {})", presence::BUCKET)),
        Ok(Err(e)) => no_presence(e),
        Err(_) => no_presence("JetStream did not answer within 5 s".into()),
    }
}

/// The listen address is free to bind, or a relay already answers there.
async fn listen_address(listen: SocketAddr) -> Check {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(_) => Ok(format!("{listen} is free to listen on")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(listen)).await {
                Ok(Ok(_)) => Ok(format!("{listen} is in use: a relay (or something else) listens there")),
                _ => Err(Problem::new(format!("{listen} is in use"), "stop what holds it, or pick another --listen")),
            }
        }
        Err(e) => Err(Problem::new(format!("cannot listen on {listen}: {e}"), "pick another --listen")),
    }
}
