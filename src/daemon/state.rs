//! The daemon's state file: its code, agent token and mode, written
//! atomically (temp file, fsync, rename) with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Mode;
use crate::protocol::agent::Credentials;

/// Name of the state file inside the state dir.
pub const STATE_FILE: &str = "state.json";

/// What the daemon keeps across restarts.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The code and agent token the relay gave; absent before the first registration.
    pub credentials: Option<Credentials>,
    /// The mode last chosen, which outlives restarts.
    pub mode: Option<Mode>,
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

/// The state dir holds the machine's code and its jobs' output: it must be
/// this user's, and is made 0700 if it was more open (someone may have made
/// it beforehand, or with another umask). One belonging to another user, who
/// could read the code or swap paths in it, is refused.
fn keep_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir).with_context(|| format!("checking the state dir {}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        anyhow::bail!(
            "the state dir {} belongs to uid {}, not to this daemon's user (uid {me}); it would share this machine's code. Give it to this user (chown) or pass another --state-dir",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making the state dir {} private (chmod 700)", dir.display()))?;
    }
    Ok(())
}

impl StateFile {
    /// The state file in `dir`; the dir is created (mode 0700) if missing.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state dir {}", dir.display()))?;
        keep_private(dir)?;
        Ok(Self { path: dir.join(STATE_FILE) })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; a missing file is an empty state.
    pub fn load(&self) -> anyhow::Result<State> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; restore it, or move it away to register as a new machine with a new code",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Replaces the state atomically: a crash leaves the old file or the new one, never half of one.
    pub fn save(&self, state: &State) -> anyhow::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write()
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SessionCode;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_state_dir_made_beforehand_is_made_private_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        StateFile::in_dir(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().permissions().mode() & 0o777, 0o700);
        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            rustix::fs::chown(&theirs, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            let err = StateFile::in_dir(&theirs).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
    }

    #[test]
    fn round_trips_with_mode_0600_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(&dir.path().join("sub")).unwrap();
        assert!(file.load().unwrap() == State::default());
        let state = State {
            credentials: Some(Credentials { code: SessionCode::generate(), token: "t".into() }),
            mode: Some(Mode::Auto),
        };
        file.save(&state).unwrap();
        assert!(file.load().unwrap() == state);
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn damaged_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path()).unwrap();
        std::fs::write(file.path(), "{not json").unwrap();
        let err = format!("{:#}", file.load().err().unwrap());
        assert!(err.contains("state.json is damaged"), "{err}");
    }
}
