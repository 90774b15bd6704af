//! What a machine's operator asks of the relay over the daemon's link: a new
//! code, and (with accounts) the linked accounts and their blocks.

use std::sync::Arc;

use super::AppState;
use super::accounts::{self, LinkState};
use super::hub::{AgentConn, Revocation};
use super::keys::Digest;
use super::mask;
use crate::protocol::SessionCode;
use crate::protocol::agent::{LinkedAccount, OperatorOp, OperatorOutcome};

/// Carries out `op` for the agent on `conn`, whose code hashes to `code_hash`.
pub async fn handle(
    state: &AppState,
    conn: &Arc<AgentConn>,
    code_hash: &mut Digest,
    op: OperatorOp,
) -> OperatorOutcome {
    use LinkState::{Active, Blocked, Pending};
    let result = match op {
        OperatorOp::ResetCode => reset_code(state, conn, code_hash).await,
        OperatorOp::ListAccounts => list(state, conn.agent_id).await,
        OperatorOp::Block { link } => block(state, conn, &link).await,
        OperatorOp::Unblock { link } => change(state, conn.agent_id, &link, &[Blocked], Active).await,
        OperatorOp::Approve { link } => change(state, conn.agent_id, &link, &[Pending], Active).await,
    };
    result.unwrap_or_else(|e| {
        tracing::error!(agent = conn.agent_id, "operator request failed: {e:#}");
        OperatorOutcome::Failed { message: "the relay could not do that just now; try again".into() }
    })
}

/// The accounts linked to this machine, emails masked: the full address never leaves the relay.
async fn list(state: &AppState, agent_id: i64) -> anyhow::Result<OperatorOutcome> {
    let links = accounts::links_of_agent(&state.store, agent_id).await?;
    let accounts = links
        .into_iter()
        .map(|(link, email)| LinkedAccount {
            id: link.id.to_string(),
            email: mask::email(&email),
            alias: link.alias,
            state: link.state,
            linked_at_ms: link.linked_at as u64,
            last_used_ms: link.last_used_at.map(|t| t as u64),
            fingerprint: state.keys.account_fingerprint(link.account_id),
        })
        .collect();
    Ok(OperatorOutcome::Accounts { accounts })
}

/// Moves one of this machine's links from one of `from` to `to`.
async fn change(
    state: &AppState,
    agent_id: i64,
    account: &str,
    from: &[LinkState],
    to: LinkState,
) -> anyhow::Result<OperatorOutcome> {
    let missing = || OperatorOutcome::Failed {
        message: format!("no account {account:?} is linked to this machine; list them with `aic-console admins`"),
    };
    let Ok(link_id) = account.parse::<i64>() else { return Ok(missing()) };
    // Usage not yet written must not outlive a block; write it now.
    state.usage.flush(&state.store).await?;
    if accounts::set_link_state(&state.store, agent_id, link_id, from, to).await? {
        tracing::info!(agent = agent_id, link = link_id, state = to.as_str(), "link changed by the operator");
        return Ok(OperatorOutcome::Done);
    }
    let known = accounts::links_of_agent(&state.store, agent_id).await?.into_iter().find(|(l, _)| l.id == link_id);
    Ok(match known {
        None => missing(),
        Some((link, _)) => OperatorOutcome::Failed {
            message: format!("account {account} is {}; that cannot be changed to {}", link.state.as_str(), to.as_str()),
        },
    })
}

/// Blocks one of this machine's links and stops that account's commands on it.
async fn block(state: &AppState, conn: &AgentConn, account: &str) -> anyhow::Result<OperatorOutcome> {
    use LinkState::{Active, Blocked, Pending};
    let outcome = change(state, conn.agent_id, account, &[Active, Pending], Blocked).await?;
    if outcome == OperatorOutcome::Done {
        let links = accounts::links_of_agent(&state.store, conn.agent_id).await?;
        if let Some((link, _)) = links.into_iter().find(|(l, _)| l.id.to_string() == account) {
            let stopped = conn.revoke(Revocation::Blocked, Some(link.account_id));
            tracing::info!(agent = conn.agent_id, link = link.id, "stopped {stopped} commands of a blocked account");
        }
    }
    Ok(outcome)
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
    if let Some(cluster) = &state.cluster {
        cluster.release(code_hash, conn.conn_id);
        cluster.hold(new_hash, Arc::clone(conn)).await;
    }
    *code_hash = new_hash;
    let stopped = conn.revoke(Revocation::CodeReset, None);
    tracing::info!(
        agent = conn.agent_id,
        "code reset by the operator; stopped {stopped} commands sent with the old code"
    );
    Ok(OperatorOutcome::CodeReset { code, code_created_ms: now as u64 })
}
