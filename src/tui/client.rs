//! A client for the daemon's control socket, shared by the CLI and the TUI.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::control::{Event, Op, Reply, Request, ServerFrame};

/// Why talking to the daemon failed, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket file.
    #[error(
        "aic-daemon is not running: there is no socket at {0}. Start it (sudo systemctl start aic-daemon), or point at its socket with --socket"
    )]
    NotRunning(PathBuf),
    /// A socket file nobody listens on.
    #[error(
        "aic-daemon is not running: {0} is left over from a daemon that stopped. Start it (sudo systemctl start aic-daemon)"
    )]
    Stale(PathBuf),
    /// The file mode keeps this user out.
    #[error(
        "permission denied on {0}: run the console as root (sudo aic-console …) or join group aic (sudo usermod -aG aic $USER, then log in again)"
    )]
    PermissionDenied(PathBuf),
    /// The daemon said no (to the connection or to a request).
    #[error("{0}")]
    Daemon(String),
    /// The daemon closed the connection.
    #[error("aic-daemon closed the connection (did it stop?)")]
    Closed,
    /// Anything else on the socket.
    #[error("talking to aic-daemon at {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A frame that could not be read.
    #[error("aic-daemon sent something this console cannot read ({0}); are both the same version?")]
    Protocol(String),
}

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    reader: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Events that arrived while waiting for a reply, oldest first.
    backlog: std::collections::VecDeque<Event>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ClientError::NotRunning(path.into()),
            std::io::ErrorKind::ConnectionRefused => ClientError::Stale(path.into()),
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.into()),
            _ => ClientError::Io { path: path.into(), source: e },
        })?;
        // Talk only to a daemon run by root or by this user: anyone else could
        // have put a socket where the daemon's should be.
        if let Ok(cred) = stream.peer_cred() {
            let me = rustix::process::geteuid().as_raw();
            if cred.uid() != 0 && cred.uid() != me {
                return Err(ClientError::Daemon(format!(
                    "the socket at {} is served by uid {}, not by root or by you; refusing to talk to it",
                    path.display(),
                    cred.uid()
                )));
            }
        }
        let (read, writer) = stream.into_split();
        Ok(Self {
            path: path.into(),
            reader: BufReader::new(read).lines(),
            writer,
            next_id: 0,
            backlog: Default::default(),
        })
    }

    async fn read_frame(&mut self) -> Result<ServerFrame, ClientError> {
        let line = self
            .reader
            .next_line()
            .await
            .map_err(|source| ClientError::Io { path: self.path.clone(), source })?
            .ok_or(ClientError::Closed)?;
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends `op` and waits for its reply's raw `result` (as a script would
    /// see it); events that arrive meanwhile are kept for [`Client::next_event`].
    pub async fn call(&mut self, op: Op) -> Result<Value, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut line = serde_json::to_vec(&Request { id, op }).expect("requests always serialize");
        line.push(b'\n');
        if let Err(source) = self.writer.write_all(&line).await {
            // The daemon may have refused this connection and said why before closing it.
            return match self.read_frame().await {
                Ok(ServerFrame::Error { message, .. }) => Err(ClientError::Daemon(message)),
                _ => Err(ClientError::Io { path: self.path.clone(), source }),
            };
        }
        loop {
            match self.read_frame().await? {
                ServerFrame::Reply { id: got, result } if got == id => return Ok(result),
                ServerFrame::Error { id: got, message } if got == Some(id) || got.is_none() => {
                    return Err(ClientError::Daemon(message));
                }
                ServerFrame::Event(event) => self.backlog.push_back(event),
                _ => {}
            }
        }
    }

    /// [`Client::call`], with the result read as the op's [`Reply`].
    pub async fn ask(&mut self, op: Op) -> Result<Reply, ClientError> {
        let value = self.call(op.clone()).await?;
        op.read_reply(value).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// [`Client::ask`], with the reply's content taken out (`StatusInfo` for `status`, ...).
    pub async fn ask_for<T: TryFrom<Reply, Error = Reply>>(&mut self, op: Op) -> Result<T, ClientError> {
        T::try_from(self.ask(op).await?).map_err(|other| ClientError::Protocol(format!("unexpected reply {other:?}")))
    }

    /// The next pushed event (after subscribing).
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(event);
        }
        loop {
            match self.read_frame().await? {
                ServerFrame::Event(event) => return Ok(event),
                ServerFrame::Error { id: None, message } => return Err(ClientError::Daemon(message)),
                _ => {}
            }
        }
    }
}
