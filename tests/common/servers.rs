//! PostgreSQL and NATS servers for the cluster tests: each a child process of
//! the test on a free loopback port, in the foreground, killed on drop.
//!
//! PostgreSQL starts from a cluster made once by `initdb` and kept in the temp
//! dir (a copy starts in well under a second); as root it runs as the
//! `postgres` user, since `initdb` and `postgres` refuse root.
//!
//! `AIC_SKIP_CLUSTER=1` skips the tests that need them, with a printed reason;
//! a missing server skips them too outside CI, and fails them under `CI=true`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to say it is ready.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// Whether a test needing `tool` (found at `path`) should be skipped; prints why.
/// Under `CI=true` a missing tool fails the test instead.
fn skipped(tool: &str, path: Option<&Path>, install: &str) -> bool {
    if std::env::var("AIC_SKIP_CLUSTER").is_ok_and(|v| v == "1") {
        eprintln!("skipped: AIC_SKIP_CLUSTER=1 (the cluster tests need {tool})");
        return true;
    }
    if path.is_some() {
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is not installed, and CI=true runs the cluster tests: {install} (or set AIC_SKIP_CLUSTER=1)");
    }
    eprintln!("skipped: {tool} is not installed ({install}, or set AIC_SKIP_CLUSTER=1 to silence this)");
    true
}

/// A free TCP port on loopback (free when asked; the server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether process `pid` holds a socket listening on TCP `port` (any address,
/// IPv4 or IPv6): a server handed a port picked free may find it taken by the
/// time it binds, and a connection to that port then reaches someone else.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[1].ends_with(&suffix) && fields[3] == "0A" {
                sockets.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
    fds.filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
}

/// A loopback port that refuses connections for as long as the returned
/// socket lives: bound but never listening, so no other test's server can
/// take it meanwhile (as one could a port picked and let go).
pub fn closed_port() -> (rustix::fd::OwnedFd, u16) {
    use rustix::net::{AddressFamily, SocketType};
    let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&socket, &std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
    let bound = std::net::SocketAddrV4::try_from(rustix::net::getsockname(&socket).unwrap()).unwrap();
    (socket, bound.port())
}

/// A server process in the foreground, its stderr drained by a thread.
struct Running {
    child: Child,
}

impl Running {
    /// Spawns `cmd` and waits for a stderr line containing `ready`; `None` if
    /// the process ended first (its output is returned for the message).
    fn start(mut cmd: Command, ready: &str) -> Result<Self, String> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            let mut said = String::new();
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains(&ready) {
                    let _ = tx.send(Ok(()));
                    break;
                }
                said.push_str(&line);
                said.push('\n');
            }
            let _ = tx.send(Err(said));
            // Keep draining, so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(START_PATIENCE) {
            Ok(Ok(())) => Ok(Self { child }),
            Ok(Err(said)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(said)
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{cmd:?} did not get ready within {START_PATIENCE:?}"))
            }
        }
    }

    /// Sends `signal` and waits for the process to end.
    fn stop(&mut self, signal: rustix::process::Signal) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, signal);
        }
        let _ = self.child.wait();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop(rustix::process::Signal::KILL);
    }
}

/// The newest PostgreSQL server binaries installed (Debian keeps them per version).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    versions.pop()
}

/// The uid and gid of the `postgres` user, read from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// A command run as the `postgres` user when this process is root.
fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    if rustix::process::geteuid().is_root() {
        let (uid, gid) =
            postgres_user().expect("running as root needs a `postgres` user (Debian's postgresql makes it)");
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Makes (once, kept in the temp dir) a fresh cluster to copy: user `aic`, trust on loopback.
fn template(bin: &Path) -> PathBuf {
    let version = bin.parent().and_then(|v| v.file_name()).unwrap().to_string_lossy().into_owned();
    let uid = rustix::process::geteuid().as_raw();
    let dir = std::env::temp_dir().join(format!("aic-pg-template-{version}-{uid}"));
    if dir.join("PG_VERSION").exists() {
        return dir;
    }
    let making = std::env::temp_dir().join(format!("aic-pg-template-{version}-{uid}.{}", std::process::id()));
    let out = as_postgres(&bin.join("initdb"))
        .args(["--username=aic", "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions", "-D"])
        .arg(&making)
        .output()
        .expect("running initdb");
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    // Whoever renames first wins; a loser's copy is thrown away.
    if std::fs::rename(&making, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&making);
    }
    dir
}

/// A PostgreSQL server of the test's own.
pub struct Postgres {
    /// The cluster's files (a copy of the template); removed on drop.
    dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
    /// The server binaries.
    bin: PathBuf,
    server: Option<Running>,
}

impl Postgres {
    /// A fresh server, or `None` (with the reason printed) when the test is skipped.
    pub fn start() -> Option<Self> {
        let bin = postgres_bin();
        if skipped("PostgreSQL", bin.as_deref(), "apt-get install postgresql") {
            return None;
        }
        let bin = bin.unwrap();
        let template = template(&bin);
        let dir = tempfile::tempdir().unwrap();
        // The postgres user must reach the copy inside the (root-owned) temp dir.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let status = Command::new("cp").arg("-a").arg(&template).arg(dir.path().join("data")).status().unwrap();
        assert!(status.success(), "copying the PostgreSQL template");
        let mut pg = Self { dir, port: 0, bin, server: None };
        for _ in 0..5 {
            pg.port = free_port();
            if pg.try_start().is_ok() {
                return Some(pg);
            }
        }
        pg.try_start().unwrap_or_else(|said| panic!("PostgreSQL did not start: {said}"));
        Some(pg)
    }

    fn try_start(&mut self) -> Result<(), String> {
        let mut cmd = as_postgres(&self.bin.join("postgres"));
        cmd.arg("-D").arg(self.dir.path().join("data")).args(["-p", &self.port.to_string()]);
        for setting in [
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=200",
        ] {
            cmd.args(["-c", setting]);
        }
        self.server = Some(Running::start(cmd, "ready to accept connections")?);
        Ok(())
    }

    /// The URL relays are given (`--database-url`).
    pub fn url(&self) -> String {
        format!("postgres://aic@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: sessions are cut, data is kept).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(rustix::process::Signal::INT);
        }
    }

    /// Starts it again on the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        self.try_start().unwrap_or_else(|said| panic!("PostgreSQL did not start again: {said}"));
    }
}

/// A NATS server with JetStream of the test's own.
pub struct Nats {
    /// JetStream's files; removed on drop.
    dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
    bin: PathBuf,
    server: Option<Running>,
}

/// `nats-server` on the PATH (or in /usr/sbin, where Debian puts it).
fn nats_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.exists())
}

impl Nats {
    /// A fresh server, or `None` (with the reason printed) when the test is skipped.
    pub fn start() -> Option<Self> {
        let bin = nats_bin();
        if skipped("nats-server", bin.as_deref(), "apt-get install nats-server") {
            return None;
        }
        let mut nats = Self { dir: tempfile::tempdir().unwrap(), port: 0, bin: bin.unwrap(), server: None };
        for _ in 0..5 {
            nats.port = free_port();
            if nats.try_start().is_ok() {
                return Some(nats);
            }
        }
        nats.try_start().unwrap_or_else(|said| panic!("nats-server did not start: {said}"));
        Some(nats)
    }

    fn try_start(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(self.dir.path());
        self.server = Some(Running::start(cmd, "Server is ready")?);
        Ok(())
    }

    /// The URL relays are given (`--nats-url`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(rustix::process::Signal::TERM);
        }
    }

    /// Starts it again on the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        self.try_start().unwrap_or_else(|said| panic!("nats-server did not start again: {said}"));
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Running::pid)
    }
}

/// HAProxy with a config of the test's, in the foreground.
pub struct Haproxy {
    /// Its config file.
    _dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
    _server: Running,
}

impl Haproxy {
    /// Starts `haproxy` with `config` (`{port}` in it becomes the port it listens on),
    /// or `None` (with the reason printed) when the test is skipped.
    pub fn start(config: &str) -> Option<Self> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().map(PathBuf::from).find(|p| p.exists());
        if skipped("HAProxy", bin.as_deref(), "apt-get install haproxy") {
            return None;
        }
        let bin = bin.unwrap();
        // The port is let go between the pick and HAProxy's bind, and another
        // test may take it meanwhile: then HAProxy exits, and another is picked.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let file = dir.path().join("haproxy.cfg");
            std::fs::write(&file, config.replace("{port}", &port.to_string())).unwrap();
            let check = Command::new(&bin).arg("-c").arg("-f").arg(&file).output().unwrap();
            assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
            let mut cmd = Command::new(&bin);
            cmd.arg("-db").arg("-f").arg(&file).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let mut server = Running { child: cmd.spawn().expect("spawning haproxy") };
            // HAProxy announces nothing when it listens: its socket is looked for.
            let deadline = std::time::Instant::now() + START_PATIENCE;
            while server.child.try_wait().unwrap().is_none() {
                if listens_on(server.pid(), port) {
                    return Some(Self { _dir: dir, port, _server: server });
                }
                assert!(std::time::Instant::now() < deadline, "haproxy did not listen on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("haproxy exited five times without listening: were its ports taken?");
    }
}
