//! MCP Tasks (`io.modelcontextprotocol/tasks`): a `remote_exec` from a client
//! that declares the extension is answered at once with a task, backed by a
//! job the daemon runs under a fresh idempotency key; `tasks/get` reads the
//! job and, once it ended, carries the same result a direct call returns;
//! `tasks/cancel` cancels the job. Clients that do not declare it see no change.
//!
//! The relay remembers which machine each task's job runs on, in memory; the
//! job itself, and who may read it, are the daemon's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
use crate::relay::error::ApiError;
use crate::relay::exec::ExecParams;
use crate::relay::jobs::{self, Follow};

/// How often a client is asked to poll a task.
const POLL_INTERVAL_MS: u64 = 1000;

/// A task's machine (the code or alias its call named) and when it was made.
#[derive(Debug, Clone)]
struct Entry {
    code: String,
    created_at: String,
}

/// Tasks by id (the job's id). Cheap to clone.
#[derive(Clone, Default)]
pub struct Tasks(Arc<Mutex<HashMap<Uuid, Entry>>>);

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
        let entry = Entry { code: params.code.clone(), created_at: created_at.clone() };
        self.tasks.0.lock().unwrap().insert(job.id, entry);
        let task = Task::new(job.id.to_string(), TaskStatus::Working, created_at.clone(), created_at)
            .with_poll_interval_ms(POLL_INTERVAL_MS);
        Ok(CreateTaskResult::new(task))
    }

    fn task_entry(&self, task_id: &str) -> Result<(Uuid, Entry), McpError> {
        let unknown = || McpError::invalid_params(format!("no task {task_id} on this relay"), None);
        let id: Uuid = task_id.parse().map_err(|_| unknown())?;
        let entry = self.tasks.0.lock().unwrap().get(&id).cloned().ok_or_else(unknown)?;
        Ok((id, entry))
    }

    /// `tasks/get`: the job now, and its result once it ended.
    pub(super) async fn task_get(
        &self,
        task_id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let (id, entry) = self.task_entry(task_id)?;
        let looked = async {
            let caller = caller(&self.state, ctx).await?;
            let job = jobs::status(&self.state, &caller, &entry.code, &id.to_string(), false).await?.job;
            let payload = match job.state {
                JobState::Pending | JobState::Running => TaskPayload::Working,
                JobState::Cancelled => TaskPayload::Cancelled,
                _ => TaskPayload::Completed { result: self.task_result(&caller, &entry.code, &job).await },
            };
            Ok::<_, ApiError>((job, payload))
        };
        let (status_message, payload) = match looked.await {
            Ok((job, payload)) => (state_words(&job), payload),
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
        let (id, entry) = self.task_entry(task_id)?;
        let cancelled = async {
            let caller = caller(&self.state, ctx).await?;
            jobs::status(&self.state, &caller, &entry.code, &id.to_string(), true).await
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
