//! `aic-daemon doctor`: the state, the relay, the control socket and the
//! clock, checked the way an operator would by hand (the config is checked by
//! the binary before it gets here).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Config;
use super::state::STATE_FILE;
use crate::doctor::{self, Check, Problem, Report};

/// How long the relay gets to answer.
const RELAY_PATIENCE: Duration = Duration::from_secs(5);

/// How far the clock may be from the relay's before it is a problem.
const MAX_SKEW: Duration = Duration::from_secs(60);

/// Runs every check after the config's, adding a line each to `report`.
pub async fn run<W: Write>(config: &Config, report: &mut Report<W>) {
    report
        .add("state dir", present_or(doctor::private(&config.state_dir, false), "not made yet (made at first start)"));
    report.add("state file", state_file(&config.state_dir.join(STATE_FILE)));
    let (relay, relay_time) = relay(config).await;
    report.add("relay", relay);
    report.add("socket", socket(&config.socket));
    report.add("clock", doctor::clock(relay_time, MAX_SKEW));
}

fn present_or(found: Result<Option<String>, Problem>, missing: &str) -> Check {
    found.map(|detail| detail.unwrap_or_else(|| missing.to_string()))
}

/// The state file is private and holds valid state.
fn state_file(path: &Path) -> Check {
    let Some(detail) = doctor::private(path, false)? else {
        return Ok(format!("{} not made yet (the first start registers and writes it)", path.display()));
    };
    let text = std::fs::read(path)
        .map_err(|e| Problem::new(format!("{} cannot be read: {e}", path.display()), "check its owner and mode"))?;
    serde_json::from_slice::<super::state::State>(&text).map_err(|_| {
        Problem::new(
            format!("{} is damaged", path.display()),
            "restore it from a backup, or move it away to register as a new machine with a new code",
        )
    })?;
    Ok(detail)
}

/// The relay URL is allowed, its host answers, and a plain relay answers
/// `GET /api/health` (whose `Date` then also checks the clock).
async fn relay(config: &Config) -> (Check, Option<SystemTime>) {
    if let Err(e) = super::link::check_relay_url(&config.relay, config.allow_insecure_relay) {
        return (Err(Problem::new(e, "use the relay's wss:// URL")), None);
    }
    let Some((tls, host, port)) = split_url(&config.relay) else {
        return (
            Err(Problem::new(format!("{} is not a relay URL", config.relay), "write e.g. wss://relay.example.com")),
            None,
        );
    };
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let mut stream = match tokio::time::timeout(RELAY_PATIENCE, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return (Err(unreachable_relay(&host, port, e)), None),
        Err(_) => return (Err(unreachable_relay(&host, port, "no answer within 5 s")), None),
    };
    if tls {
        return (Ok(format!("{host}:{port} accepts connections (TLS is checked when the daemon connects)")), None);
    }
    match tokio::time::timeout(RELAY_PATIENCE, health(&mut stream, &host)).await {
        Ok(Some(date)) => (Ok(format!("{} answers as an aic relay", config.relay)), date),
        _ => (
            Err(Problem::new(
                format!("{host}:{port} does not answer as an aic relay"),
                "check the URL's host and port",
            )),
            None,
        ),
    }
}

fn unreachable_relay(host: &str, port: u16, why: impl std::fmt::Display) -> Problem {
    Problem::new(
        format!("cannot connect to {host}:{port}: {why}"),
        "check the URL, that the relay runs, and that this machine may reach it",
    )
}

/// `(tls, host, port)` of a ws://, wss://, http:// or https:// URL.
fn split_url(url: &str) -> Option<(bool, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let tls = match scheme {
        "wss" | "https" => true,
        "ws" | "http" => false,
        _ => return None,
    };
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None if tls => 443,
        None => 80,
    };
    (!host.is_empty()).then(|| (tls, host.to_string(), port))
}

/// Sends `GET /api/health`; `Some(date)` when a relay answered 200 (`date` from its `Date` header).
async fn health(stream: &mut tokio::net::TcpStream, host: &str) -> Option<Option<SystemTime>> {
    let request = format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut reply = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut reply).await.ok()?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let ok = lines.next()?.split_whitespace().nth(1) == Some("200") && body.contains("\"ok\":true");
    let date = lines.find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("date")).map(|(_, v)| v));
    ok.then(|| date.and_then(|d| doctor::http_date(d.trim())))
}

/// The socket's directory is safe (as the daemon requires), and a socket
/// there is private to the daemon's user and group.
fn socket(path: &Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        let me = rustix::process::geteuid().as_raw();
        if !meta.is_dir() || (meta.uid() != me && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
            let what =
                format!("{} must be a directory of yours (or root's) that others cannot write to", dir.display());
            return Err(Problem::new(what, format!("chmod go-w {} (or pick another --socket)", dir.display())));
        }
    }
    let Some(detail) = doctor::private(path, true)? else {
        return Ok(format!("{} not there (made when the daemon starts)", path.display()));
    };
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Ok(format!("{detail}, a daemon answers")),
        Err(_) => Ok(format!("{detail}, left over (the daemon is not running; it is replaced at start)")),
    }
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn relay_urls_split_into_host_and_port() {
        assert_eq!(split_url("wss://relay.example.com"), Some((true, "relay.example.com".into(), 443)));
        assert_eq!(split_url("ws://127.0.0.1:8080/"), Some((false, "127.0.0.1".into(), 8080)));
        assert_eq!(split_url("http://[::1]:9/x"), Some((false, "::1".into(), 9)));
        assert_eq!(split_url("ftp://x"), None);
        assert_eq!(split_url("ws://:80"), None);
    }
}
