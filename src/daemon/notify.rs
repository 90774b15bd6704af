//! Tells systemd (a `Type=notify` unit) when the daemon is ready and what its
//! link is doing, which `systemctl status` shows, through `$NOTIFY_SOCKET`.
//! Outside such a unit there is no socket and nothing is sent.

use std::os::unix::net::UnixDatagram;

use tokio::sync::watch;

use super::LinkStatus;

/// Sends `state` (`READY=1`, `STATUS=…`, newline-separated) to systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = UnixDatagram::unbound() else { return };
    let sent = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::debug!("telling systemd {state:?}: {e}");
    }
}

/// Follows the link's state: ready once linked, or once the first attempt
/// failed and the daemon retries with backoff (so a boot never waits on the
/// relay); then a status line on each change.
pub async fn follow(mut status: watch::Receiver<LinkStatus>) {
    let mut ready = false;
    loop {
        let (connected, retrying) = {
            let now = status.borrow_and_update();
            (now.connected, now.retrying)
        };
        let line = if connected { "linked to the relay" } else { "not linked to the relay; retrying with backoff" };
        if connected || retrying {
            let prefix = if ready { "" } else { "READY=1\n" };
            notify(&format!("{prefix}STATUS={line}"));
            ready = true;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
