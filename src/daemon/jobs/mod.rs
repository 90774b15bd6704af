//! Detached jobs: commands that outlive their caller, the relay and the
//! daemon. Each job is a directory under `<state dir>/jobs/` (0700) holding
//! its record, its supervisor's ids, its spooled output and how it ended
//! ([`record`], [`spool`]); the supervisor is a process of its own
//! ([`runner`]). The daemon keeps only an index of the records in memory and
//! reads the rest from disk when asked, so a restarted daemon finds every
//! job again. Calls from the relay are answered in [`calls`].
//!
//! Job output is the only command output the daemon writes to disk, in its
//! own state dir on the operator's machine, until the retention sweep.

pub mod calls;
pub mod record;
pub mod runner;
pub mod spool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::record::{End, Pids, Record};
use crate::clock::now_ms;
use crate::protocol::jobs::{JobInfo, JobKind, JobState};

/// How long an idempotency key is remembered, from its first request.
pub const KEY_WINDOW: Duration = Duration::from_secs(600);

/// How often the daemon looks for jobs that ended and jobs past retention.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What the operator sets about jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where job directories live (`<state dir>/jobs`).
    pub dir: PathBuf,
    /// The program re-executed as the supervisor (`aic-daemon`).
    pub runner: Option<PathBuf>,
    /// Jobs running (or waiting for approval) at once, at most.
    pub max_running: usize,
    /// Output bytes kept per job; past it the oldest are dropped.
    pub cap: u64,
    /// How long an ended job (record and output) is kept.
    pub retention: Duration,
}

/// The jobs of this daemon. Cheap to clone.
#[derive(Clone)]
pub struct Jobs(Arc<Inner>);

/// What [`Jobs`] shares.
struct Inner {
    /// Settings.
    settings: Settings,
    /// Every job on disk, by id, with its end once seen (held for a moment, never across an await).
    index: Mutex<HashMap<Uuid, Entry>>,
    /// Jobs waiting for the operator; cancelling one withdraws it.
    pending: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Jobs whose supervisor is being started (no `pid` yet).
    starting: Mutex<std::collections::HashSet<Uuid>>,
}

/// One job in the index.
struct Entry {
    /// Its record.
    record: Record,
    /// Set once it is seen to have ended, so that its end is reported once.
    ended: bool,
}

impl Jobs {
    /// The jobs found under `settings.dir` (none when it does not exist yet).
    pub fn open(settings: Settings) -> Self {
        let mut index = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&settings.dir) {
            for entry in entries.flatten() {
                if let Some(record) = record::read_json::<Record>(&entry.path(), record::RECORD) {
                    index.insert(record.id, Entry { record, ended: false });
                }
            }
        }
        Self(Arc::new(Inner {
            settings,
            index: Mutex::new(index),
            pending: Mutex::default(),
            starting: Mutex::default(),
        }))
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Job `id`'s directory.
    pub fn dir(&self, id: Uuid) -> PathBuf {
        self.0.settings.dir.join(id.to_string())
    }

    /// The record of job `id`, if `owner` may see it (`None`: the operator, who sees all).
    pub fn record(&self, id: Uuid, owner: Option<&str>) -> Option<Record> {
        let index = self.0.index.lock().unwrap();
        let entry = index.get(&id)?;
        owner.is_none_or(|o| o == entry.record.owner).then(|| entry.record.clone())
    }

    /// The jobs `owner` may see (all for `None`), newest first; execs run under a key are not jobs.
    pub fn list(&self, owner: Option<&str>) -> Vec<JobInfo> {
        let records: Vec<Record> = {
            let index = self.0.index.lock().unwrap();
            index
                .values()
                .map(|e| &e.record)
                .filter(|r| r.kind == JobKind::Job && owner.is_none_or(|o| o == r.owner))
                .cloned()
                .collect()
        };
        let mut jobs: Vec<JobInfo> = records.iter().map(|r| self.info(r)).collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
        jobs
    }

    /// The job `owner` started under `key_hash` within [`KEY_WINDOW`].
    pub fn keyed(&self, owner: &str, key_hash: &str) -> Option<Record> {
        let since = now_ms().saturating_sub(KEY_WINDOW.as_millis() as u64);
        let index = self.0.index.lock().unwrap();
        index
            .values()
            .map(|e| &e.record)
            .filter(|r| r.owner == owner && r.key_hash.as_deref() == Some(key_hash) && r.created_ms >= since)
            .max_by_key(|r| r.created_ms)
            .cloned()
    }

    /// Jobs running or waiting for approval.
    pub fn active(&self) -> usize {
        let records: Vec<Record> = self.0.index.lock().unwrap().values().map(|e| e.record.clone()).collect();
        records.iter().filter(|r| !self.state_of(r).0.is_final()).count()
    }

    /// Writes a new job's directory and record; the job is then in the index.
    pub fn create(&self, record: Record) -> std::io::Result<()> {
        let dir = self.dir(record.id);
        record::private_dir(&dir)?;
        record::write_json(&dir, record::RECORD, &record)?;
        self.0.index.lock().unwrap().insert(record.id, Entry { record, ended: false });
        Ok(())
    }

    /// Records that job `id` ended without running.
    pub fn end_unrun(&self, id: Uuid, end: End) {
        if let Err(e) = record::write_json(&self.dir(id), record::END, &End { ended_ms: now_ms(), ..end }) {
            tracing::warn!("recording the end of job {id}: {e}");
        }
    }

    /// Marks job `id` as waiting for the operator; the token withdraws it.
    pub fn wait_for_approval(&self, id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        self.0.pending.lock().unwrap().insert(id, token.clone());
        token
    }

    /// Job `id` no longer waits for the operator.
    pub fn approval_over(&self, id: Uuid) {
        self.0.pending.lock().unwrap().remove(&id);
    }

    /// Marks job `id` as having its supervisor started (or no longer).
    pub fn set_starting(&self, id: Uuid, starting: bool) {
        let mut set = self.0.starting.lock().unwrap();
        if starting {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    /// The job as callers see it now.
    pub fn info(&self, r: &Record) -> JobInfo {
        let dir = self.dir(r.id);
        let (state, end, pids) = self.state_of(r);
        let extent = spool::extent(&dir);
        let started = end.as_ref().and_then(|e| e.started_ms).or(pids.map(|p| p.started_ms));
        let ended_ms = end.as_ref().map(|e| e.ended_ms);
        let duration_ms = match (started, ended_ms) {
            (Some(s), Some(e)) => e.saturating_sub(s),
            (Some(s), None) => now_ms().saturating_sub(s),
            _ => 0,
        };
        let end = end.unwrap_or_default();
        JobInfo {
            id: r.id,
            state,
            kind: r.kind,
            command: r.command.clone(),
            cwd: r.cwd.clone(),
            who: r.who.clone(),
            created_ms: r.created_ms,
            ended_ms,
            duration_ms,
            exit_code: end.exit_code,
            output_bytes: extent.end + extent.err,
            dropped_bytes: extent.first,
            truncated: end.truncated,
            refusal: end.refusal,
            message: end.message,
        }
    }

    /// Where job `r` is: its end, or its supervisor's ids while it runs. A
    /// job whose supervisor is gone without an end is recorded as lost.
    fn state_of(&self, r: &Record) -> (JobState, Option<End>, Option<Pids>) {
        let dir = self.dir(r.id);
        if let Some(end) = record::read_json::<End>(&dir, record::END) {
            return (final_state(&end), Some(end), None);
        }
        if self.0.pending.lock().unwrap().contains_key(&r.id) {
            return (JobState::Pending, None, None);
        }
        if self.0.starting.lock().unwrap().contains(&r.id) {
            return (JobState::Running, None, None);
        }
        let pids = record::read_json::<Pids>(&dir, record::PIDS);
        if pids.is_some_and(|p| record::alive(p.supervisor)) {
            return (JobState::Running, None, pids);
        }
        // It may have written its end and exited since the first look.
        if let Some(end) = record::read_json::<End>(&dir, record::END) {
            return (final_state(&end), Some(end), pids);
        }
        let message = match pids {
            Some(_) => {
                "its supervisor ended without recording how the job ended (the machine restarted, or it was killed)"
            }
            None => "the daemon stopped before the job started",
        };
        let end = End {
            ended_ms: now_ms(),
            started_ms: pids.map(|p| p.started_ms),
            message: Some(message.into()),
            ..End::default()
        };
        let _ = record::write_json(&dir, record::END, &end);
        (JobState::Lost, Some(end), pids)
    }

    /// The process groups of jobs whose supervisor runs, for the control
    /// socket's check that a client is not one of this daemon's commands.
    pub fn process_groups(&self) -> Vec<i32> {
        let ids: Vec<Uuid> = self.0.index.lock().unwrap().iter().filter(|(_, e)| !e.ended).map(|(id, _)| *id).collect();
        ids.into_iter()
            .filter_map(|id| record::read_json::<Pids>(&self.dir(id), record::PIDS))
            // The supervisor leads a group of its own, the job's command
            // another; before the command's is known, only the first.
            .flat_map(|p| [p.supervisor, p.group])
            .filter(|&group| record::group_alive(group))
            .collect()
    }

    /// Cancels job `id`: a waiting one is withdrawn; a running one's group
    /// gets SIGTERM, then SIGKILL after the grace.
    pub fn cancel(&self, id: Uuid) {
        if let Some(waiting) = self.0.pending.lock().unwrap().get(&id) {
            waiting.cancel();
            return;
        }
        let dir = self.dir(id);
        if record::read_json::<End>(&dir, record::END).is_some() {
            return;
        }
        let _ = record::private_append(&dir.join(record::CANCEL));
        if let Some(pids) = record::read_json::<Pids>(&dir, record::PIDS) {
            record::signal_group(pids.group, rustix::process::Signal::TERM);
            tokio::spawn(async move {
                tokio::time::sleep(crate::daemon::executor::KILL_GRACE).await;
                record::signal_group(pids.group, rustix::process::Signal::KILL);
            });
        }
    }

    /// Jobs seen to have ended since the last sweep; deletes those past
    /// retention (an exec's once its key is forgotten).
    pub fn sweep(&self) -> Vec<JobInfo> {
        let records: Vec<(Record, bool)> =
            self.0.index.lock().unwrap().values().map(|e| (e.record.clone(), e.ended)).collect();
        let now = now_ms();
        let mut ended = Vec::new();
        for (r, seen) in records {
            // A job already seen to have ended needs only its end read again.
            let ended_ms = if seen {
                record::read_json::<End>(&self.dir(r.id), record::END).map(|e| e.ended_ms)
            } else {
                let info = self.info(&r);
                if !info.state.is_final() {
                    continue;
                }
                if let Some(e) = self.0.index.lock().unwrap().get_mut(&r.id) {
                    e.ended = true;
                }
                let at = info.ended_ms;
                ended.push(info);
                at
            };
            if now >= self.expires(&r, ended_ms.unwrap_or(now)) {
                self.delete(r.id);
            }
        }
        ended
    }

    /// When a job that ended at `ended` is deleted (Unix ms).
    fn expires(&self, r: &Record, ended: u64) -> u64 {
        match r.kind {
            JobKind::Job => ended.saturating_add(self.0.settings.retention.as_millis() as u64),
            JobKind::Exec => (r.created_ms + KEY_WINDOW.as_millis() as u64).max(ended),
        }
    }

    fn delete(&self, id: Uuid) {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return tracing::warn!("deleting job {id} past retention: {e}"),
        }
        self.0.index.lock().unwrap().remove(&id);
    }

    /// The end of job `id`'s output as text, for consoles.
    pub fn tail(&self, id: Uuid) -> Option<String> {
        self.record(id, None)?;
        let dir = self.dir(id);
        let bytes = crate::protocol::control::TAIL_BYTES as u64;
        let end = spool::extent(&dir).end;
        let (_, data) = spool::read(&dir, end.saturating_sub(bytes), bytes);
        Some(crate::daemon::traffic::tail_text(&data))
    }

    /// The directory jobs live in.
    pub fn root(&self) -> &Path {
        &self.0.settings.dir
    }
}

/// The state an end stands for.
fn final_state(end: &End) -> JobState {
    if end.refusal.is_some() {
        JobState::Refused
    } else if end.cancelled {
        JobState::Cancelled
    } else if end.timed_out {
        JobState::TimedOut
    } else if end.exit_code.is_none() {
        JobState::Lost
    } else {
        JobState::Exited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_the_daemons_command_from_before_its_own_group_is_known() {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().unwrap();
        let settings =
            Settings { dir: dir.path().into(), runner: None, max_running: 1, cap: 1024, retention: Duration::ZERO };
        let record = Record {
            id: Uuid::new_v4(),
            kind: JobKind::Job,
            command: "true".into(),
            cwd: None,
            timeout_ms: 1000,
            pty: false,
            cap: 1024,
            owner: "owner".into(),
            who: "who".into(),
            ip: "127.0.0.1".into(),
            key_hash: None,
            created_ms: 0,
        };
        let jobs = Jobs::open(settings);
        jobs.create(record.clone()).unwrap();
        // A stand-in for a supervisor between its setsid and its command's spawn.
        let mut supervisor = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pids = Pids { supervisor: supervisor.id() as i32, group: 0, started_ms: 0 };
        record::write_json(&jobs.dir(record.id), record::PIDS, &pids).unwrap();
        let groups = jobs.process_groups();
        supervisor.kill().unwrap();
        supervisor.wait().unwrap();
        assert_eq!(groups, vec![pids.supervisor]);
    }
}
