//! `aic-relay doctor`: the data dir, the secret, the database, the listen
//! address and the clock, checked the way an operator would by hand (the
//! config is checked by the binary before it gets here).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::keys::SECRET_FILE;
use super::store::DB_FILE;
use crate::doctor::{self, Check, Problem, Report};

/// Runs every check after the config's, adding a line each to `report`.
/// `secret_given`: the secret comes from `--secret`/`AIC_RELAY_SECRET`, not the file.
pub async fn run<W: Write>(data_dir: &Path, listen: SocketAddr, secret_given: bool, report: &mut Report<W>) {
    let dir = doctor::private(data_dir, false)
        .map(|d| d.unwrap_or_else(|| format!("{} not made yet (made at first start)", data_dir.display())));
    report.add("data dir", dir);
    let secret = if secret_given {
        Ok(Some("from AIC_RELAY_SECRET or --secret".into()))
    } else {
        doctor::private(&data_dir.join(SECRET_FILE), false)
    };
    report.add("secret", secret.map(|d| d.unwrap_or_else(|| "not made yet (made at first start)".into())));
    let db = doctor::private(&data_dir.join(DB_FILE), false);
    report.add("database", db.map(|d| d.unwrap_or_else(|| "not made yet (made at first start)".into())));
    report.add("listen", listen_address(listen).await);
    report.add("clock", doctor::clock(None, Duration::ZERO));
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
