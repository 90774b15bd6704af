//! A command's life in the daemon, from arrival to its last message,
//! independent of the transport: admission (mode and the concurrency
//! permit), the approval queue, the cancel map and the traffic ring. One
//! place (`Commands::note`) turns each process event into both the wire
//! message and the ring update. The link hands requests in with
//! [`Commands::submit`]; consoles read and decide through the same handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::executor::{self, ProcessEvent};
use super::files::Outgoing;
use super::jobs::Jobs;
use super::shared::Daemon;
use super::starting::Starts;
use super::traffic::{self, Traffic};
use crate::clock::now_ms;
use crate::protocol::agent::{AgentMessage, ExecRequest, OUTPUT_HELD, Refusal, Requester, Stream};
use crate::protocol::control::{Approval, CommandState, Decision, Event, Mode, TrafficEntry, append_tail};
use crate::protocol::files::FrameKind;

/// Where a command's wire messages and output frames go (the relay link), in order.
pub type Outbox = mpsc::Sender<Outgoing>;

/// How long a command's `started` waits for the event after it before it
/// is sent alone: a short command's `started` and `exit` then reach the
/// relay in one write, one wake-up on each side instead of two.
const STARTED_HOLD: Duration = Duration::from_millis(3);

/// The commands of this daemon. Cheap to clone.
#[derive(Clone)]
pub struct Commands(Arc<Inner>);

/// What [`Commands`] shares.
struct Inner {
    /// Mode, settings and the event bus.
    daemon: Daemon,
    /// One permit per command allowed to run (or wait for approval) at once.
    limit: Arc<Semaphore>,
    /// Every command's task, so that shutdown can wait for their kills.
    tasks: TaskTracker,
    // The std Mutexes below are held for a few field updates at a time and
    // never across an `.await`.
    /// Recent commands, as consoles see them.
    traffic: Mutex<Traffic>,
    /// Commands waiting for the operator, by id.
    approvals: Mutex<HashMap<Uuid, Waiting>>,
    /// Commands admitted and not yet ended, by id, so that a cancel can reach them.
    live: Mutex<HashMap<Uuid, Live>>,
    /// The process groups of commands that started, kept while any process
    /// is left in them: a background process a command left behind is still
    /// that command's, for the control socket's operator check.
    groups: Mutex<Vec<i32>>,
    /// Commands started whose group is not in `groups` yet.
    starts: Starts,
    /// Detached jobs, admitted through the same mode, queue and ring.
    jobs: Jobs,
}

/// A command in the approval queue.
struct Waiting {
    /// What the operator is shown.
    approval: Approval,
    /// Where the operator's answer goes.
    answer: oneshot::Sender<bool>,
}

/// A command admitted and not yet ended.
struct Live {
    /// Cancelled when its caller goes away; kills its process group.
    cancel: CancellationToken,
    /// Who asked, so that the commands of one caller can be cancelled.
    requester: Requester,
    /// The relay's credit for its output frames; `None` when it sends JSON output.
    credit: executor::Credit,
    /// The most chunks of credit it holds at once: see [`window`].
    window: usize,
}

/// The output credit `req` is read within, in chunks: the window the relay
/// asked for, bounded by what a relay holds per command ([`OUTPUT_HELD`]
/// bytes of the request's chunks).
fn window(req: &ExecRequest) -> usize {
    (req.window as usize).min(OUTPUT_HELD / req.output_chunk()).max(1)
}

impl Commands {
    /// No commands yet; the permits are `daemon`'s `max_concurrent`.
    pub fn new(daemon: Daemon) -> Self {
        let limit = Arc::new(Semaphore::new(daemon.config().max_concurrent));
        let jobs = Jobs::open(daemon.config().job_settings());
        Self(Arc::new(Inner {
            jobs,
            daemon,
            limit,
            tasks: TaskTracker::new(),
            traffic: Mutex::default(),
            approvals: Mutex::default(),
            live: Mutex::default(),
            groups: Mutex::default(),
            starts: Starts::default(),
        }))
    }

    /// Takes a command on its own task: the mode, the limit and (supervised)
    /// the operator decide whether it runs. Its messages go to `out`;
    /// cancelling `scope` (the link going away) cancels it.
    pub fn submit(&self, req: ExecRequest, out: Outbox, scope: &CancellationToken) {
        let mode = self.0.daemon.mode();
        let permit = Arc::clone(&self.0.limit).try_acquire_owned().ok();
        let initial = match (&permit, mode) {
            (None, _) | (_, Mode::Disabled) => CommandState::Refused,
            (Some(_), Mode::Supervised) => CommandState::Pending,
            (Some(_), Mode::Auto) => CommandState::Running,
        };
        let cancel = scope.child_token();
        let credit = (req.window > 0).then(|| Arc::new(Semaphore::new(window(&req))));
        let live = Live { cancel: cancel.clone(), requester: req.requester.clone(), credit, window: window(&req) };
        if let Err(message) = self.enter(req.id, live) {
            // Not noted: the ring's entry under this id, and its state, are the live command's.
            let msg = AgentMessage::Refused { id: req.id, reason: Refusal::BadRequest, message };
            self.0.tasks.spawn(async move { out.send(Outgoing::Message(Box::new(msg))).await });
            return;
        }
        self.record(&req, initial);
        let this = self.clone();
        self.0.tasks.spawn(async move {
            let id = req.id;
            match permit {
                Some(permit) => this.life(req, mode, &out, &cancel, permit).await,
                None => {
                    let message = format!(
                        "this machine is already running {} command(s), as many as its operator allows at once; retry when one has finished",
                        this.0.daemon.config().max_concurrent
                    );
                    this.refuse(id, Refusal::Busy, message, &out).await;
                }
            }
            this.0.live.lock().unwrap().remove(&id);
        });
    }

    /// Takes `id` into the live commands, unless a command with that id is
    /// already there: then why not. Its cgroup, cancel and ring entry would
    /// be taken over by the new one, and removed when that one ends.
    fn enter(&self, id: Uuid, live: Live) -> Result<(), String> {
        match self.0.live.lock().unwrap().entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => Err(format!(
                "a command with id {id} is already running on this machine; each command needs an id of its own"
            )),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(live);
                Ok(())
            }
        }
    }

    /// Admits something that is not a shell command (a file transfer, which
    /// `req.command` describes) the way a command is: the mode, a permit, the
    /// approval queue in supervised mode, a traffic entry in every mode. The
    /// caller does the work and reports on the returned [`Admitted`].
    pub async fn admit(&self, req: &ExecRequest, scope: &CancellationToken) -> Result<Admitted, (Refusal, String)> {
        let mode = self.0.daemon.mode();
        let Ok(permit) = Arc::clone(&self.0.limit).try_acquire_owned() else {
            self.record(req, CommandState::Refused);
            let max = self.0.daemon.config().max_concurrent;
            return Err((
                Refusal::Busy,
                format!(
                    "this machine is already running {max} command(s) and transfer(s), as many as its operator allows at once; retry when one has finished"
                ),
            ));
        };
        let initial = match mode {
            Mode::Disabled => CommandState::Refused,
            Mode::Supervised => CommandState::Pending,
            Mode::Auto => CommandState::Running,
        };
        let cancel = scope.child_token();
        let live = Live { cancel: cancel.clone(), requester: req.requester.clone(), credit: None, window: 0 };
        self.enter(req.id, live).map_err(|message| (Refusal::BadRequest, message))?;
        self.record(req, initial);
        let admitted = Admitted { commands: self.clone(), id: req.id, cancel, _permit: permit, ended: false };
        let refused = match mode {
            Mode::Disabled => Some((
                Refusal::Disabled,
                "this machine's operator has disabled remote commands and transfers (aic-console mode disabled)"
                    .to_owned(),
            )),
            Mode::Auto => None,
            Mode::Supervised => match self.await_approval(req, &admitted.cancel).await {
                Decision::Approved => None,
                Decision::Withdrawn => return Err((Refusal::Denied, "withdrawn by its caller".into())),
                Decision::TimedOut => Some((
                    Refusal::ApprovalTimeout,
                    format!(
                        "the machine's operator did not answer within {}; ask them to watch aic-console, then retry",
                        human(self.0.daemon.config().approval_timeout)
                    ),
                )),
                _ => Some((Refusal::Denied, "the machine's operator denied this transfer".to_owned())),
            },
        };
        match refused {
            Some((reason, message)) => {
                self.update(req.id, |e| e.state = refused_state(reason));
                let mut admitted = admitted;
                admitted.ended = true;
                Err((reason, message))
            }
            None => {
                self.update(req.id, |e| e.state = CommandState::Running);
                Ok(admitted)
            }
        }
    }

    /// An admitted command's way from the mode and the queue to its end.
    async fn life(
        &self,
        req: ExecRequest,
        mode: Mode,
        out: &Outbox,
        cancel: &CancellationToken,
        _permit: OwnedSemaphorePermit,
    ) {
        let id = req.id;
        match mode {
            Mode::Disabled => {
                let message = "this machine's operator has disabled remote commands (aic-console mode disabled)".into();
                return self.refuse(id, Refusal::Disabled, message, out).await;
            }
            Mode::Auto => {}
            Mode::Supervised => match self.await_approval(&req, cancel).await {
                Decision::Approved => {}
                Decision::Withdrawn => return self.cancelled(id),
                refused => return self.refuse_decided(id, refused, out).await,
            },
        }
        if cancel.is_cancelled() {
            // Approved in the same instant its caller left: nobody would hear it.
            return self.cancelled(id);
        }
        self.execute(req, out, cancel).await;
        if cancel.is_cancelled() {
            self.cancelled(id);
        }
    }

    /// Tells the caller the operator said no, or nothing in time.
    async fn refuse_decided(&self, id: Uuid, decision: Decision, out: &Outbox) {
        if decision == Decision::TimedOut {
            let message = format!(
                "the machine's operator did not answer within {}; ask them to watch aic-console, then retry",
                human(self.0.daemon.config().approval_timeout)
            );
            return self.refuse(id, Refusal::ApprovalTimeout, message, out).await;
        }
        let message = "the machine's operator denied this command".into();
        self.refuse(id, Refusal::Denied, message, out).await
    }

    /// Runs the command, passing each process event on as it comes. When the
    /// link is gone the command is cancelled (nobody can hear it).
    async fn execute(&self, req: ExecRequest, out: &Outbox, cancel: &CancellationToken) {
        let id = req.id;
        let credit = self.0.live.lock().unwrap().get(&id).and_then(|l| l.credit.clone());
        // Output goes as binary frames, numbered, when the relay gave credit.
        let mut frames = credit.is_some().then_some(0u64);
        let (tx, mut rx) = mpsc::channel(1);
        let mut start = Some(self.0.starts.begin());
        let forward = async move {
            while let Some(event) = rx.recv().await {
                let started = matches!(event, ProcessEvent::Started { .. });
                let msg = self.note(id, event, frames.as_mut());
                if started {
                    start.take();
                }
                // What follows a short command's `started` (its exit, its
                // first output) goes right behind it, so that the link writes
                // both at once; the ring and the process groups know at once.
                let next = if started { timeout(STARTED_HOLD, rx.recv()).await.ok().flatten() } else { None };
                let next = next.map(|event| self.note(id, event, frames.as_mut()));
                for msg in std::iter::once(msg).chain(next) {
                    if out.send(msg).await.is_err() {
                        cancel.cancel();
                        return;
                    }
                }
            }
        };
        tokio::join!(executor::run(req, tx, cancel, credit.clone()), forward);
        // A pipe reader still waiting for credit stops waiting.
        credit.inspect(|c| c.close());
    }

    /// The relay's credit for a command's output: `chunks` more frames, never
    /// more than the request's window (bounded by `OUTPUT_HELD`) held.
    pub fn credit(&self, id: Uuid, chunks: u32) {
        let live = self.0.live.lock().unwrap();
        if let Some(live) = live.get(&id)
            && let Some(credit) = &live.credit
        {
            let room = live.window.saturating_sub(credit.available_permits());
            credit.add_permits((chunks as usize).min(room));
        }
    }

    /// Refuses a command: the caller is told why, the ring shows it.
    async fn refuse(&self, id: Uuid, reason: Refusal, message: String, out: &Outbox) {
        let _ = out.send(self.note(id, ProcessEvent::Refused { reason, message }, None)).await;
    }

    /// The one place a process event becomes a ring update and a wire
    /// message (output as a binary frame numbered from `frames`, when given).
    fn note(&self, id: Uuid, event: ProcessEvent, frames: Option<&mut u64>) -> Outgoing {
        let msg = match event {
            ProcessEvent::Started { pgid } => {
                self.0.groups.lock().unwrap().push(pgid);
                self.update(id, |e| e.state = CommandState::Running);
                AgentMessage::Started { id }
            }
            ProcessEvent::Output { stream, data } => {
                // Only the end of the chunk is ever shown, so only it is decoded.
                let text = traffic::tail_text(data.bytes());
                if let Some(entry) = self.0.traffic.lock().unwrap().get_mut(id) {
                    entry.bytes += data.bytes().len() as u64;
                    append_tail(&mut entry.tail, &text);
                }
                if self.0.daemon.watched() {
                    self.0.daemon.emit(Event::Output { command: id, stream, text });
                }
                if let Some(seq) = frames {
                    let kind = if stream == Stream::Stderr { FrameKind::Stderr } else { FrameKind::Stdout };
                    let frame = data.into_frame(kind, id, *seq);
                    *seq += 1;
                    return Outgoing::Frame(frame);
                }
                AgentMessage::Output { id, stream, data: data.into_bytes() }
            }
            ProcessEvent::Exit(exit) => {
                self.update(id, |e| {
                    e.state = if exit.timed_out { CommandState::TimedOut } else { CommandState::Exited };
                    e.exit_code = Some(exit.exit_code);
                    e.duration_ms = Some(exit.duration_ms);
                    e.truncated = exit.truncated;
                });
                AgentMessage::Exit { id, exit }
            }
            ProcessEvent::Refused { reason, message } => {
                self.update(id, |e| e.state = refused_state(reason));
                AgentMessage::Refused { id, reason, message }
            }
        };
        Outgoing::Message(Box::new(msg))
    }

    /// Puts a command in the approval queue and waits for the operator, the
    /// approval timeout, or its caller going away, whichever comes first.
    async fn await_approval(&self, req: &ExecRequest, cancel: &CancellationToken) -> Decision {
        let (answer, mut decided) = oneshot::channel();
        let wait = self.0.daemon.config().approval_timeout;
        let code = self.0.daemon.credentials().map(|c| c.code.masked()).unwrap_or_default();
        let approval = approval(req, now_ms(), wait, code);
        self.0.approvals.lock().unwrap().insert(req.id, Waiting { approval: approval.clone(), answer });
        self.0.daemon.emit(Event::ApprovalQueued(approval));

        let mut decision = tokio::select! {
            answer = &mut decided => if answer == Ok(true) { Decision::Approved } else { Decision::Denied },
            _ = tokio::time::sleep(wait) => Decision::TimedOut,
            _ = cancel.cancelled() => Decision::Withdrawn,
        };
        if matches!(decision, Decision::TimedOut | Decision::Withdrawn)
            && self.0.approvals.lock().unwrap().remove(&req.id).is_none()
        {
            // An operator decided in the same instant: their word stands.
            decision = match decided.await {
                Ok(true) => Decision::Approved,
                _ => Decision::Denied,
            };
        }
        self.0.daemon.emit(Event::ApprovalDecided { command: req.id, decision });
        decision
    }

    /// An operator's answer for a waiting command. The first answer wins.
    pub fn decide(&self, id: Uuid, approve: bool) -> Result<(), String> {
        let waiting = self.0.approvals.lock().unwrap().remove(&id).ok_or_else(|| {
            format!(
                "no command {id} is waiting for approval: it was already decided, withdrawn by its caller, or timed out"
            )
        })?;
        waiting.answer.send(approve).map_err(|_| format!("command {id} was withdrawn by its caller"))
    }

    /// Cancels command `id` (its caller went away); false if it is not live.
    pub fn cancel(&self, id: Uuid) -> bool {
        let live = self.0.live.lock().unwrap();
        live.get(&id).map(|l| l.cancel.cancel()).is_some()
    }

    /// Cancels every live command (waiting or running) whose requester
    /// matches; returns how many.
    pub fn cancel_where(&self, matches: impl Fn(&Requester) -> bool) -> usize {
        let live = self.0.live.lock().unwrap();
        live.values().filter(|l| matches(&l.requester)).map(|l| l.cancel.cancel()).count()
    }

    /// Withdraws every waiting command that came with another code than
    /// `current` (masked): after a code reset, nothing sent with the old code
    /// may still be approved. Returns how many.
    pub fn withdraw_other_codes(&self, current: &str) -> usize {
        let ids: Vec<Uuid> = {
            let approvals = self.0.approvals.lock().unwrap();
            approvals.values().filter(|w| w.approval.code != current).map(|w| w.approval.id).collect()
        };
        ids.into_iter().filter(|&id| self.cancel(id)).count()
    }

    /// The process groups of the commands that started and still have a
    /// process in them (running, or left behind); empty ones are forgotten.
    pub fn process_groups(&self) -> Vec<i32> {
        let mut groups = self.0.groups.lock().unwrap();
        groups.retain(|&g| {
            rustix::process::Pid::from_raw(g).is_some_and(|pid| rustix::process::test_kill_process_group(pid).is_ok())
        });
        let mut all = groups.clone();
        drop(groups);
        all.extend(self.0.jobs.process_groups());
        all
    }

    /// Waits, for at most `limit`, until every command started so far has
    /// its process group in [`Commands::process_groups`]; false if one has not.
    pub async fn starts_settled(&self, limit: Duration) -> bool {
        self.0.starts.settle(limit).await
    }

    /// The daemon's jobs.
    pub fn jobs(&self) -> &Jobs {
        &self.0.jobs
    }

    /// Mode, settings and the event bus.
    pub fn daemon(&self) -> &Daemon {
        &self.0.daemon
    }

    /// Answers a relay's call about jobs on a task of its own (an `output`
    /// call may wait for output); the reply goes to `out`.
    pub fn job_call(&self, req: u64, call: crate::protocol::jobs::JobCall, out: Outbox) {
        let this = self.clone();
        tokio::spawn(async move {
            let reply = super::jobs::calls::answer(&this, call).await;
            let _ = out.send(Outgoing::Message(Box::new(AgentMessage::JobReply { req, reply }))).await;
        });
    }

    /// Shows a job that has just been asked for in the traffic ring.
    pub fn job_arrived(&self, req: &ExecRequest, state: CommandState) {
        self.record(req, state);
    }

    /// Waits for the operator's decision on a job, as for a command.
    pub async fn job_approval(&self, req: &ExecRequest, withdrawn: &CancellationToken) -> Decision {
        self.await_approval(req, withdrawn).await
    }

    /// Shows a job's state (started, or ended) in the traffic ring.
    pub fn job_ended_or_running(&self, job: &crate::protocol::jobs::JobInfo) {
        use crate::protocol::jobs::JobState;
        let state = match job.state {
            JobState::Pending => CommandState::Pending,
            JobState::Running => CommandState::Running,
            JobState::Exited => CommandState::Exited,
            JobState::TimedOut => CommandState::TimedOut,
            JobState::Cancelled | JobState::Lost => CommandState::Cancelled,
            JobState::Refused => job.refusal.map_or(CommandState::Refused, refused_state),
        };
        self.update(job.id, |e| {
            e.state = state;
            e.exit_code = job.exit_code;
            e.duration_ms = job.state.is_final().then_some(job.duration_ms);
            e.bytes = job.output_bytes;
            e.truncated = job.truncated || job.dropped_bytes > 0;
        });
    }

    /// Shows a job's end in the traffic ring.
    pub fn job_ended(&self, job: &crate::protocol::jobs::JobInfo) {
        self.job_ended_or_running(job);
    }

    /// The traffic ring, oldest first.
    pub fn traffic(&self) -> Vec<TrafficEntry> {
        self.0.traffic.lock().unwrap().snapshot()
    }

    /// Commands waiting for a decision, oldest first.
    pub fn approvals(&self) -> Vec<Approval> {
        let approvals = self.0.approvals.lock().unwrap();
        let mut list: Vec<_> = approvals.values().map(|w| w.approval.clone()).collect();
        list.sort_by_key(|a| a.at_ms);
        list
    }

    /// Commands waiting for a decision, and commands running.
    pub fn counts(&self) -> (usize, usize) {
        let pending = self.0.approvals.lock().unwrap().len();
        (pending, self.0.traffic.lock().unwrap().running())
    }

    /// Waits (up to `within`) for every command's task to end, once their
    /// scopes are cancelled; false if some did not.
    pub async fn drain(&self, within: Duration) -> bool {
        self.0.tasks.close();
        tokio::time::timeout(within, self.0.tasks.wait()).await.is_ok()
    }

    /// Records a command that has just arrived.
    fn record(&self, req: &ExecRequest, state: CommandState) {
        let entry = self.0.traffic.lock().unwrap().push(req, state, now_ms());
        self.0.daemon.emit(Event::Traffic(entry));
    }

    /// Changes a command's ring entry and tells consoles.
    fn update(&self, id: Uuid, change: impl FnOnce(&mut TrafficEntry)) {
        let mut traffic = self.0.traffic.lock().unwrap();
        let Some(entry) = traffic.get_mut(id) else { return };
        change(entry);
        let entry = entry.clone();
        drop(traffic);
        self.0.daemon.emit(Event::Traffic(entry));
    }

    /// Marks a command whose caller went away.
    fn cancelled(&self, id: Uuid) {
        self.update(id, |e| e.state = CommandState::Cancelled);
    }
}

/// Something admitted by [`Commands::admit`], running; dropping it before
/// [`Admitted::finish`] marks it cancelled. Its permit is held until then.
pub struct Admitted {
    commands: Commands,
    id: Uuid,
    /// Cancelled when its caller goes away (the relay's cancel, the link ending).
    pub cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
    /// Its ring entry has its final state.
    ended: bool,
}

impl Admitted {
    /// Notes `bytes` more moved (the traffic pane shows the count, never the
    /// bytes); consoles hear of it at every 4 MiB.
    pub fn progress(&self, bytes: u64) {
        let crossed = match self.commands.0.traffic.lock().unwrap().get_mut(self.id) {
            Some(entry) => {
                let before = entry.bytes;
                entry.bytes += bytes;
                before >> 22 != entry.bytes >> 22
            }
            None => false,
        };
        if crossed {
            self.commands.update(self.id, |_| {});
        }
    }

    /// Marks it ended: exit code 0 when it succeeded, 1 with `why` as its shown tail when not.
    pub fn finish(mut self, started: std::time::Instant, failure: Option<&str>) {
        self.ended = true;
        self.commands.update(self.id, |e| {
            e.state = CommandState::Exited;
            e.exit_code = Some(if failure.is_some() { 1 } else { 0 });
            e.duration_ms = Some(started.elapsed().as_millis() as u64);
            if let Some(why) = failure {
                append_tail(&mut e.tail, why);
            }
        });
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.commands.0.live.lock().unwrap().remove(&self.id);
        if !self.ended {
            self.commands.cancelled(self.id);
        }
    }
}

/// The ring's state for a refusal.
fn refused_state(reason: Refusal) -> CommandState {
    match reason {
        Refusal::Denied => CommandState::Denied,
        Refusal::ApprovalTimeout => CommandState::ApprovalTimeout,
        _ => CommandState::Refused,
    }
}

/// What the operator is shown of a command waiting since `now`, sent with `code` (masked).
fn approval(req: &ExecRequest, now: u64, wait: Duration, code: String) -> Approval {
    Approval {
        id: req.id,
        at_ms: now,
        who: req.requester.shown(),
        ip: req.requester.ip.clone(),
        command: req.command.clone(),
        cwd: req.cwd.clone(),
        timeout_ms: req.timeout_ms,
        expires_at_ms: now + wait.as_millis() as u64,
        code,
    }
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::{State, StateFile};
    use crate::daemon::{Config, LinkStatus};
    use crate::protocol::agent::Stream;

    /// A lifecycle over a daemon in `mode`, with no relay and no socket.
    fn lifecycle(mode: Mode, max_concurrent: usize) -> (tempfile::TempDir, Commands) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new("ws://127.0.0.1:1", dir.path().into(), dir.path().join("aic.sock"));
        config.mode = Some(mode);
        config.max_concurrent = max_concurrent;
        let file = StateFile::in_dir(dir.path()).unwrap();
        let status = tokio::sync::watch::channel(LinkStatus::default()).0;
        let (daemon, _calls) = Daemon::new(config, file, State::default(), status).unwrap();
        (dir, Commands::new(daemon))
    }

    fn req(command: &str) -> ExecRequest {
        ExecRequest {
            id: Uuid::new_v4(),
            command: command.into(),
            cwd: None,
            timeout_ms: 30_000,
            max_output: 1 << 20,
            pty: false,
            window: 0,
            chunk: 0,
            requester: Requester {
                who: "a***@example.com".into(),
                ip: "192.0.2.1".into(),
                fingerprint: "0a1b2c3d".into(),
            },
        }
    }

    /// Messages until (and with) the command's last one.
    async fn until_end(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<AgentMessage> {
        let mut seen = Vec::new();
        while let Some(out) = rx.recv().await {
            let Outgoing::Message(msg) = out else { panic!("a frame where no credit was given") };
            let msg = *msg;
            let last = matches!(msg, AgentMessage::Exit { .. } | AgentMessage::Refused { .. });
            seen.push(msg);
            if last {
                break;
            }
        }
        seen
    }

    fn state_of(commands: &Commands, id: Uuid) -> CommandState {
        commands.traffic().into_iter().find(|e| e.id == id).unwrap().state
    }

    #[tokio::test]
    async fn auto_runs_and_each_event_reaches_the_wire_and_the_ring() {
        let (_dir, commands) = lifecycle(Mode::Auto, 4);
        let (out, mut rx) = mpsc::channel(64);
        let r = req("echo hi; exit 3");
        commands.submit(r.clone(), out, &CancellationToken::new());
        let seen = until_end(&mut rx).await;
        assert_eq!(seen[0], AgentMessage::Started { id: r.id });
        assert!(seen.contains(&AgentMessage::Output { id: r.id, stream: Stream::Stdout, data: b"hi\n".to_vec() }));
        let Some(AgentMessage::Exit { exit, .. }) = seen.last() else { panic!("{seen:?}") };
        assert_eq!(exit.exit_code, 3);
        let entry = commands.traffic().pop().unwrap();
        assert_eq!(
            (entry.state, entry.exit_code, entry.bytes, entry.tail.as_str()),
            (CommandState::Exited, Some(3), 3, "hi\n")
        );
    }

    #[tokio::test]
    async fn a_started_sent_together_with_what_follows_still_comes_first_on_the_wire_and_to_a_console() {
        let (_dir, commands) = lifecycle(Mode::Auto, 4);
        let mut console = commands.0.daemon.subscribe();
        let (out, mut rx) = mpsc::channel(64);
        for command in ["echo hi", "echo hi; sleep 0.1; echo there"] {
            let r = req(command);
            commands.submit(r.clone(), out.clone(), &CancellationToken::new());
            let wire: Vec<&str> = until_end(&mut rx).await.iter().map(kind).collect();
            assert_eq!(wire.first(), Some(&"started"), "{command}: {wire:?}");
            assert_eq!(wire.iter().filter(|k| **k == "started").count(), 1, "{command}: {wire:?}");
            assert!(wire.contains(&"output") && wire.last() == Some(&"exit"), "{command}: {wire:?}");
            let mut seen = Vec::new();
            while let Ok(event) = console.try_recv() {
                match event {
                    Event::Traffic(e) if e.id == r.id => seen.push(format!("{:?}", e.state)),
                    Event::Output { command, .. } if command == r.id => seen.push("output".into()),
                    _ => {}
                }
            }
            let running = seen.iter().position(|s| s == "Running");
            let output = seen.iter().position(|s| s == "output");
            assert!(running.is_some() && running < output, "{command}: {seen:?}");
        }
    }

    fn kind(msg: &AgentMessage) -> &'static str {
        match msg {
            AgentMessage::Started { .. } => "started",
            AgentMessage::Output { .. } => "output",
            AgentMessage::Exit { .. } => "exit",
            _ => "other",
        }
    }

    #[tokio::test]
    async fn supervised_waits_for_the_operator_whose_first_answer_wins() {
        let (_dir, commands) = lifecycle(Mode::Supervised, 4);
        let (out, mut rx) = mpsc::channel(64);
        let (yes, no) = (req("true"), req("true"));
        let mut events = commands.0.daemon.subscribe();
        commands.submit(yes.clone(), out.clone(), &CancellationToken::new());
        commands.submit(no.clone(), out, &CancellationToken::new());
        let mut waiting = 0;
        while waiting < 2 {
            waiting += usize::from(matches!(events.recv().await.unwrap(), Event::ApprovalQueued(_)));
        }
        let queued: Vec<_> = commands.approvals().iter().map(|a| a.id).collect();
        assert_eq!(queued.len(), 2);
        // Two accounts whose masked emails collide are told apart by their fingerprints.
        assert!(commands.approvals().iter().all(|a| a.who == "a***@example.com #0a1b2c3d"));
        assert!(commands.traffic().iter().all(|e| e.who == "a***@example.com #0a1b2c3d"));
        assert_eq!((state_of(&commands, yes.id), commands.counts().0), (CommandState::Pending, 2));

        commands.decide(no.id, false).unwrap();
        let err = commands.decide(no.id, true).unwrap_err();
        assert!(err.contains("already decided"), "{err}");
        let seen = until_end(&mut rx).await;
        assert!(
            matches!(seen[..], [AgentMessage::Refused { id, reason: Refusal::Denied, .. }] if id == no.id),
            "{seen:?}"
        );
        assert_eq!(state_of(&commands, no.id), CommandState::Denied);

        commands.decide(yes.id, true).unwrap();
        let seen = until_end(&mut rx).await;
        assert!(matches!(seen.last(), Some(AgentMessage::Exit { id, .. }) if *id == yes.id), "{seen:?}");
        assert!(commands.approvals().is_empty());
    }

    #[tokio::test]
    async fn disabled_and_busy_are_refused_without_running() {
        let (_dir, commands) = lifecycle(Mode::Disabled, 4);
        let (out, mut rx) = mpsc::channel(64);
        commands.submit(req("true"), out, &CancellationToken::new());
        let seen = until_end(&mut rx).await;
        assert!(matches!(seen[..], [AgentMessage::Refused { reason: Refusal::Disabled, .. }]), "{seen:?}");

        let (_dir, commands) = lifecycle(Mode::Supervised, 1);
        let (out, mut rx) = mpsc::channel(64);
        let (first, second) = (req("true"), req("true"));
        commands.submit(first.clone(), out.clone(), &CancellationToken::new());
        commands.submit(second.clone(), out, &CancellationToken::new());
        let seen = until_end(&mut rx).await;
        assert!(
            matches!(&seen[..], [AgentMessage::Refused { id, reason: Refusal::Busy, message }]
            if *id == second.id && message.contains("already running 1 command")),
            "{seen:?}"
        );
        assert_eq!(state_of(&commands, second.id), CommandState::Refused);
        assert_eq!(state_of(&commands, first.id), CommandState::Pending);
    }

    #[tokio::test]
    async fn a_second_command_with_the_id_of_a_live_one_is_refused_and_the_first_runs_on() {
        let (_dir, commands) = lifecycle(Mode::Auto, 4);
        let (out, mut rx) = mpsc::channel(64);
        let first = req("sleep 30");
        commands.submit(first.clone(), out.clone(), &CancellationToken::new());
        let Some(Outgoing::Message(started)) = rx.recv().await else { panic!("no started") };
        assert_eq!(*started, AgentMessage::Started { id: first.id });
        let second = ExecRequest { command: "echo second".into(), ..first.clone() };
        commands.submit(second, out, &CancellationToken::new());
        let Some(Outgoing::Message(refused)) = rx.recv().await else { panic!("no answer") };
        let AgentMessage::Refused { id, reason, message } = *refused else { panic!("{refused:?}") };
        assert_eq!((id, reason), (first.id, Refusal::BadRequest));
        assert!(message.contains("already running"), "{message}");
        assert_eq!((commands.traffic().len(), state_of(&commands, first.id)), (1, CommandState::Running));
        // The first is still the one a cancel reaches.
        assert!(commands.cancel(first.id));
        let seen = until_end(&mut rx).await;
        let Some(AgentMessage::Exit { exit, .. }) = seen.last() else { panic!("{seen:?}") };
        assert_eq!(exit.exit_code, 128 + 15, "killed by SIGTERM: {seen:?}");
    }

    #[tokio::test]
    async fn output_credit_held_never_passes_the_window_the_request_asked_for_nor_the_relays_bound() {
        use crate::protocol::agent::OUTPUT_CHUNK_LARGE;
        let (_dir, commands) = lifecycle(Mode::Auto, 4);
        let (out, mut rx) = mpsc::channel(64);
        let large = OUTPUT_CHUNK_LARGE as u32;
        for (window, chunk, held) in [(2, 0, 2), (1000, large, OUTPUT_HELD / OUTPUT_CHUNK_LARGE)] {
            let r = ExecRequest { window, chunk, ..req("sleep 30") };
            commands.submit(r.clone(), out.clone(), &CancellationToken::new());
            let Some(Outgoing::Message(started)) = rx.recv().await else { panic!("no started") };
            assert_eq!(*started, AgentMessage::Started { id: r.id });
            commands.credit(r.id, 100);
            let credit = commands.0.live.lock().unwrap()[&r.id].credit.clone().unwrap();
            assert_eq!(credit.available_permits(), held, "window {window}, chunk {chunk}");
            assert!(commands.cancel(r.id));
            until_end(&mut rx).await;
        }
    }

    #[tokio::test]
    async fn a_cancel_kills_the_process_group_and_marks_the_command_cancelled() {
        let (_dir, commands) = lifecycle(Mode::Auto, 4);
        let (out, mut rx) = mpsc::channel(64);
        let r = req("sleep 30");
        commands.submit(r.clone(), out, &CancellationToken::new());
        let Some(Outgoing::Message(started)) = rx.recv().await else { panic!("no started") };
        assert_eq!(*started, AgentMessage::Started { id: r.id });
        assert_eq!(commands.process_groups().len(), 1);
        assert!(commands.cancel(r.id));
        let seen = until_end(&mut rx).await;
        let Some(AgentMessage::Exit { exit, .. }) = seen.last() else { panic!("{seen:?}") };
        assert_eq!(exit.exit_code, 128 + 15, "killed by SIGTERM");
        assert!(commands.drain(Duration::from_secs(5)).await);
        assert_eq!(state_of(&commands, r.id), CommandState::Cancelled);
        assert!(!commands.cancel(r.id));
        // The group is forgotten once the kernel has let go of its last process
        // (bounded by the clock, not by a count of looks).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if commands.process_groups().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the killed command's group is still remembered: {:?}", commands.process_groups());
    }

    #[tokio::test]
    async fn the_scope_going_away_withdraws_waiting_commands_and_cancel_where_picks_by_requester() {
        let (_dir, commands) = lifecycle(Mode::Supervised, 4);
        let (out, _rx) = mpsc::channel(64);
        let scope = CancellationToken::new();
        let mine = req("true");
        let mut theirs = req("true");
        theirs.requester.who = "anonymous".into();
        commands.submit(mine.clone(), out.clone(), &scope);
        commands.submit(theirs.clone(), out, &CancellationToken::new());
        assert_eq!(commands.cancel_where(|r| r.who == "anonymous"), 1);
        scope.cancel();
        assert!(commands.drain(Duration::from_secs(5)).await);
        assert_eq!(state_of(&commands, mine.id), CommandState::Cancelled);
        assert_eq!(state_of(&commands, theirs.id), CommandState::Cancelled);
        assert!(commands.approvals().is_empty());
    }
}
