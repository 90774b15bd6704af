//! MCP Tasks (`io.modelcontextprotocol/tasks`): a `remote_exec` from a client
//! that declares the extension is answered at once with a task, backed by a
//! job the daemon runs under a fresh idempotency key; `tasks/get` reads the
//! job and, once it ended, carries the same result a direct call returns;
//! `tasks/cancel` cancels the job. Clients that do not declare it see no change.
//!
//! The relay keeps nothing per task: the task id itself carries the job's id,
//! the machine its call named and when it was made, sealed (AEAD) under a key
//! derived from the relay's secret. A task thus survives a relay restart,
//! opens on any relay of a cluster (they share the secret), and costs no
//! memory. The job itself, and who may read it, are the daemon's: an id gives
//! its holder nothing the holder's own credentials do not.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rmcp::model::{
    CallToolResult, CreateTaskResult, DetailedTask, GetTaskResult, JsonObject, Task, TaskPayload, TaskStatus,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use uuid::Uuid;

use super::output::ToolResult;
use super::{Mcp, caller, refusal};
use crate::protocol::jobs::{JobInfo, JobState};
use crate::relay::access::{Caller, Purpose};
use crate::relay::error::{ApiError, Reason};
use crate::relay::exec::ExecParams;
use crate::relay::jobs::{self, Follow};
use crate::relay::keys::Keys;

/// How often a client is asked to poll a task.
const POLL_INTERVAL_MS: u64 = 1000;

/// Bound into every sealed id, so that nothing else sealed under the key
/// (now or later) opens as a task id, and the format can change.
const TASK_AAD: &[u8] = b"aic mcp task id v1";

/// What a task id carries: the job, the machine (the code or alias its call
/// named; a credential, so only ever sealed) and when the task was made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    job: Uuid,
    code: String,
    created_at: String,
}

/// Seals task ids and opens them, under the relay secret's task key. Cheap
/// to clone.
#[derive(Clone)]
pub struct Tasks(Arc<LessSafeKey>);

impl Tasks {
    /// The sealer for `keys`' secret.
    pub fn new(keys: &Keys) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &keys.task_key()).expect("a 32-byte key fits ChaCha20-Poly1305");
        Self(Arc::new(LessSafeKey::new(key)))
    }

    /// The id of the task `entry`: base64url (no padding) of a random nonce
    /// and the sealed (job id, length of created_at, created_at, code).
    fn seal(&self, entry: &Entry) -> String {
        let created = entry.created_at.as_bytes();
        let created = &created[..created.len().min(usize::from(u8::MAX))];
        let mut bytes = Vec::with_capacity(17 + created.len() + entry.code.len() + 16);
        bytes.extend_from_slice(entry.job.as_bytes());
        bytes.push(created.len() as u8);
        bytes.extend_from_slice(created);
        bytes.extend_from_slice(entry.code.as_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(TASK_AAD), &mut bytes)
            .expect("sealing fails only for inputs past 256 GiB");
        let mut id = nonce.to_vec();
        id.append(&mut bytes);
        URL_SAFE_NO_PAD.encode(id)
    }

    /// What `id` carries, or `None` when it does not open: garbled,
    /// truncated, or sealed under another secret.
    fn open(&self, id: &str) -> Option<Entry> {
        let bytes = URL_SAFE_NO_PAD.decode(id).ok()?;
        let (nonce, sealed) = bytes.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self.0.open_in_place(nonce, Aad::from(TASK_AAD), &mut sealed).ok()?;
        let (job, rest) = plain.split_at_checked(16)?;
        let (&len, rest) = rest.split_first()?;
        let (created, code) = rest.split_at_checked(usize::from(len))?;
        Some(Entry {
            job: Uuid::from_slice(job).ok()?,
            code: String::from_utf8(code.to_vec()).ok()?,
            created_at: String::from_utf8(created.to_vec()).ok()?,
        })
    }
}

/// Whether the request's client declared the tasks extension.
pub fn declared(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities().is_some_and(|caps| caps.supports_tasks())
}

impl Mcp {
    /// Starts `params` as a job and answers with its task.
    pub(super) async fn exec_as_task(
        &self,
        caller: &Caller,
        params: &ExecParams,
    ) -> Result<CreateTaskResult, ApiError> {
        let key = Uuid::new_v4().to_string();
        let (_, job) = jobs::exec_keyed(&self.state, caller, params, key).await?;
        let created_at = rmcp::task_manager::current_timestamp();
        let entry = Entry { job: job.id, code: params.code.clone(), created_at: created_at.clone() };
        let task = Task::new(self.tasks.seal(&entry), TaskStatus::Working, created_at.clone(), created_at)
            .with_poll_interval_ms(POLL_INTERVAL_MS);
        Ok(CreateTaskResult::new(task))
    }

    /// What `task_id` carries; an id that does not open is refused as unknown.
    fn task_entry(&self, task_id: &str) -> Result<Entry, McpError> {
        let unknown = || McpError::invalid_params(format!("no task {task_id} on this relay"), None);
        self.tasks.open(task_id).ok_or_else(unknown)
    }

    /// `tasks/get`: the job now, and its result once it ended.
    pub(super) async fn task_get(
        &self,
        task_id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let entry = self.task_entry(task_id)?;
        let looked = async {
            let caller = caller(&self.state, ctx).await?;
            let job = jobs::status(&self.state, &caller, &entry.code, &entry.job.to_string(), false).await?.job;
            let payload = match job.state {
                JobState::Pending | JobState::Running => TaskPayload::Working,
                JobState::Cancelled => TaskPayload::Cancelled,
                _ => TaskPayload::Completed { result: self.task_result(&caller, &entry.code, &job).await },
            };
            Ok::<_, ApiError>((job, payload))
        };
        let (status_message, payload) = match looked.await {
            Ok((job, payload)) => (state_words(&job), payload),
            // The job may well run on: its machine is between relays (one
            // restarting, or this one not holding it). Polled again, it comes back.
            Err(err) if err.reason == Reason::AgentOffline => (err.message.clone(), TaskPayload::Working),
            Err(err) => (err.message.clone(), TaskPayload::Completed { result: object(refusal(&err)) }),
        };
        let now = rmcp::task_manager::current_timestamp();
        let task = Task::new(task_id, TaskStatus::Working, entry.created_at, now)
            .with_status_message(status_message)
            .with_poll_interval_ms(POLL_INTERVAL_MS);
        Ok(GetTaskResult::new(DetailedTask::new(task, payload)))
    }

    /// The tool result of an ended job, as a direct `remote_exec` returns it.
    async fn task_result(&self, caller: &Caller, code: &str, job: &JobInfo) -> JsonObject {
        let collected = async {
            let reached = jobs::reach(&self.state, caller, code, Purpose::Look).await?;
            Follow::new(reached, job).collect().await
        };
        object(match collected.await {
            Ok(outcome) => ToolResult::new(&outcome, self.state.config.mcp_output_max).into_call_result(),
            Err(err) => refusal(&err),
        })
    }

    /// `tasks/cancel`: cancels the job.
    pub(super) async fn task_cancel(&self, task_id: &str, ctx: &RequestContext<RoleServer>) -> Result<(), McpError> {
        let entry = self.task_entry(task_id)?;
        let cancelled = async {
            let caller = caller(&self.state, ctx).await?;
            jobs::status(&self.state, &caller, &entry.code, &entry.job.to_string(), true).await
        };
        cancelled.await.map(drop).map_err(|err| McpError::invalid_params(err.message, None))
    }
}

/// A job's state in words, for the task's status message.
fn state_words(job: &JobInfo) -> String {
    let state = serde_json::to_value(job.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    format!("{state}, {} ms, {} bytes of output", job.duration_ms, job.output_bytes)
}

fn object(result: CallToolResult) -> JsonObject {
    match serde_json::to_value(result) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => JsonObject::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry { job: Uuid::new_v4(), code: "ab12-cd34-ef56".into(), created_at: "2026-11-30T16:00:00Z".into() }
    }

    fn tasks() -> Tasks {
        Tasks::new(&Keys::parse(&"7".repeat(64)).unwrap())
    }

    #[test]
    fn an_id_opens_to_what_was_sealed_and_two_seals_differ() {
        let (tasks, entry) = (tasks(), entry());
        let (a, b) = (tasks.seal(&entry), tasks.seal(&entry));
        assert_ne!(a, b, "a fresh nonce each time");
        assert_eq!(tasks.open(&a), Some(entry.clone()));
        assert_eq!(tasks.open(&b), Some(entry));
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{a}");
    }

    #[test]
    fn a_changed_truncated_or_foreign_id_does_not_open() {
        let (tasks, entry) = (tasks(), entry());
        let id = tasks.seal(&entry);
        let bytes = URL_SAFE_NO_PAD.decode(&id).unwrap();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            assert_eq!(tasks.open(&URL_SAFE_NO_PAD.encode(&changed)), None, "byte {i} changed");
            assert_eq!(tasks.open(&URL_SAFE_NO_PAD.encode(&bytes[..i])), None, "cut to {i} bytes");
        }
        let other = Tasks::new(&Keys::parse(&"8".repeat(64)).unwrap());
        assert_eq!(other.open(&id), None);
        for garbled in ["", "x", "not base64!", &entry.job.to_string(), &format!("{id}=")] {
            assert_eq!(tasks.open(garbled), None, "{garbled}");
        }
    }

    #[test]
    fn the_code_is_not_in_the_id() {
        let (tasks, entry) = (tasks(), entry());
        let id = tasks.seal(&entry);
        let decoded = URL_SAFE_NO_PAD.decode(&id).unwrap();
        let code = entry.code.as_bytes();
        assert!(!decoded.windows(code.len()).any(|w| w == code));
        assert!(!id.contains(&entry.code) && !id.contains(&entry.job.to_string()));
        for engine in [base64::engine::general_purpose::STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
            for skip in 0..3 {
                // The code's base64 at each of the three alignments it could
                // take: the characters that depend on the code's bytes only.
                let aligned = engine.encode([&b"xx"[..skip], code].concat());
                assert!(!id.contains(&aligned[(8 * skip).div_ceil(6)..aligned.len() - 2]), "{skip}");
            }
        }
    }
}
