//! What a machine's operator asks of the relay over the daemon's link: a new
//! code, and (with accounts) the linked accounts and their blocks.

use std::sync::Arc;

use super::AppState;
use super::hub::AgentConn;
use super::keys::Digest;
use crate::protocol::SessionCode;
use crate::protocol::agent::{OperatorOp, OperatorOutcome};

/// Carries out `op` for the agent on `conn`, whose code hashes to `code_hash`.
pub async fn handle(
    state: &AppState,
    conn: &Arc<AgentConn>,
    code_hash: &mut Digest,
    op: OperatorOp,
) -> OperatorOutcome {
    let result = match op {
        OperatorOp::ResetCode => reset_code(state, conn, code_hash).await,
        OperatorOp::ListAccounts => Ok(OperatorOutcome::Accounts { accounts: Vec::new() }),
        OperatorOp::Block { account } | OperatorOp::Unblock { account } | OperatorOp::Approve { account } => {
            Ok(OperatorOutcome::Failed {
                message: format!(
                    "no account {account:?} is linked to this machine; list them with `aic-console admins`"
                ),
            })
        }
    };
    result.unwrap_or_else(|e| {
        tracing::error!(agent = conn.agent_id, "operator request failed: {e:#}");
        OperatorOutcome::Failed { message: "the relay could not do that just now; try again".into() }
    })
}

/// A fresh code no agent holds, with its hash.
pub async fn unused_code(state: &AppState) -> anyhow::Result<(SessionCode, Digest)> {
    // 60 bits make a collision rare; a few tries make it harmless.
    for _ in 0..5 {
        let code = SessionCode::generate();
        let hash = state.keys.code_hash(&code);
        if state.store.agent_by_code(&hash).await?.is_none() {
            return Ok((code, hash));
        }
    }
    anyhow::bail!("could not mint an unused code")
}

async fn reset_code(
    state: &AppState,
    conn: &Arc<AgentConn>,
    code_hash: &mut Digest,
) -> anyhow::Result<OperatorOutcome> {
    let (code, new_hash) = unused_code(state).await?;
    let now = super::now_ms();
    state.store.reset_code(conn.agent_id, &new_hash, now).await?;
    state.hub.rekey(code_hash, new_hash, conn, now);
    *code_hash = new_hash;
    tracing::info!(agent = conn.agent_id, "code reset by the operator");
    Ok(OperatorOutcome::CodeReset { code, code_created_ms: now as u64 })
}
