//! Who may reach which machine: turns the `code` a caller quoted into a
//! connected agent, or into the refusal the access rules give.

use std::net::IpAddr;
use std::sync::Arc;

use super::AppState;
use super::error::ApiError;
use super::hub::AgentConn;
use crate::protocol::SessionCode;
use crate::protocol::agent::{AgentInfo, Requester};

/// Who is asking, as every entry point (REST, MCP) sees it. The access rules
/// and the operator's view of a command go by this and nothing else, so a new
/// kind of caller (an account's API key) is added here once for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The address the request came from.
    pub ip: IpAddr,
}

impl Caller {
    /// A caller without credentials.
    pub fn anonymous(ip: IpAddr) -> Self {
        Self { ip }
    }

    /// How the operator is shown this caller.
    pub fn requester(&self) -> Requester {
        Requester { who: "anonymous".into(), ip: self.ip.to_string() }
    }
}

/// A machine the caller may use.
pub struct Target {
    /// The machine's code.
    pub code: SessionCode,
    /// Its live link, if its daemon is connected.
    pub conn: Option<Arc<AgentConn>>,
    /// What its daemon last said about the machine.
    pub info: AgentInfo,
    /// When its code was made (Unix ms).
    pub code_created_ms: i64,
}

impl Target {
    /// The live link, or the offline error.
    pub fn online(self) -> Result<Arc<AgentConn>, ApiError> {
        self.conn.ok_or_else(ApiError::agent_offline)
    }

    /// Whole minutes left in the code's anonymous window.
    pub fn fresh_minutes(&self, state: &AppState) -> u64 {
        let ends = self.code_created_ms.saturating_add(state.config.anonymous_window.as_millis() as i64);
        (ends.saturating_sub(super::now_ms()).max(0) as u64) / 60_000
    }
}

/// Applies the access rules to an anonymous caller quoting `code`.
pub async fn resolve(state: &AppState, code: &str) -> Result<Target, ApiError> {
    let code: SessionCode = code.parse().map_err(|e| ApiError::bad_request(format!("code: {e}")))?;
    let code_hash = state.keys.code_hash(&code);
    let window = state.config.anonymous_window.as_millis() as i64;
    let fresh = |created: i64| super::now_ms().saturating_sub(created) < window;

    if let Some(conn) = state.hub.get(&code_hash)
        && fresh(conn.code_created_ms())
    {
        return Ok(Target { code, info: conn.info.clone(), code_created_ms: conn.code_created_ms(), conn: Some(conn) });
    }
    // Every refusal goes through the same store lookup, so that unknown and
    // expired codes cost the same time as well as giving the same bytes.
    let record = state.store.agent_by_code(&code_hash).await.map_err(|e| {
        tracing::error!("looking up a code: {e:#}");
        ApiError::internal()
    })?;
    match record {
        Some(record) if fresh(record.code_created_ms) => {
            Ok(Target { code, conn: None, info: record.agent_info, code_created_ms: record.code_created_ms })
        }
        _ => Err(ApiError::anonymous_refused()),
    }
}
