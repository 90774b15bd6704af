//! Who may reach which machine: the caller behind a request (its address and,
//! with a bearer key, its account), and the access rules that turn the
//! `code` it quoted into a machine or a refusal. REST and MCP both come here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::accounts::{self, Account, Link, LinkState};
use super::error::{ApiError, Reason};
use super::hub::AgentConn;
use super::keys::Digest;
use super::mask;
use super::store::AgentRecord;
use crate::protocol::SessionCode;
use crate::protocol::agent::{AgentInfo, RelayMessage, Requester};

/// Who is asking, as every entry point (REST, MCP) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client's address (behind a trusted proxy, the one it forwarded).
    pub ip: IpAddr,
    /// The account whose key came with the request.
    pub account: Option<Account>,
}

impl Caller {
    /// A caller without credentials.
    pub fn anonymous(ip: IpAddr) -> Self {
        Self { ip, account: None }
    }

    /// How the operator is shown this caller: a masked email, never the full
    /// one, and the account's fingerprint to tell alike masks apart.
    pub fn requester(&self, keys: &super::keys::Keys) -> Requester {
        let who = self.account.as_ref().map_or_else(|| "anonymous".into(), |a| mask::email(&a.email));
        let fingerprint = self.account.as_ref().map_or_else(String::new, |a| keys.account_fingerprint(a.id));
        Requester { who, ip: self.ip.to_string(), fingerprint }
    }
}

/// Reads the caller from a request: the client's address, and the account
/// behind `Authorization: Bearer <key>` (401 if a key is given but not valid).
pub async fn authenticate(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, ApiError> {
    let ip = state.config.proxies.client_ip(peer.ip(), headers);
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(Caller::anonymous(ip)) };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    let account = if key.starts_with(super::oauth::grants::ACCESS_PREFIX) {
        oauth_account(state, key).await?
    } else {
        accounts::authenticate(&state.store, &state.keys, key).await.map_err(store_error(state))?
    };
    let account = account.ok_or_else(unauthorized)?;
    if account.active_until.is_some_and(|until| super::now_ms() >= until) {
        return Err(reactivation_required(state));
    }
    Ok(Caller { ip, account: Some(account) })
}

/// The account behind an OAuth access token issued for this relay's MCP resource.
async fn oauth_account(state: &AppState, token: &str) -> Result<Option<Account>, ApiError> {
    let found = super::oauth::grants::bearer(&state.store, &state.keys, token, super::now_ms())
        .await
        .map_err(store_error(state))?;
    let resource = state.public.get().map(super::oauth::resource);
    let found = found.filter(|b| Some(&b.resource) == resource.as_ref());
    if let Some(b) = &found {
        state.usage.note_grant(b.account_id, &b.client_id, super::now_ms());
    }
    Ok(found.map(|b| Account {
        id: b.account_id,
        email: b.email,
        key_id: format!("oauth:{}", b.client_id),
        active_until: accounts::active_until(b.daily_reactivation, b.last_sign_in_at),
    }))
}

/// 403 for an account whose keys are dormant: its owner has not signed in on
/// the web within the last day, and daily re-activation is on.
pub fn reactivation_required(state: &AppState) -> ApiError {
    let login_url = state.public.get().map_or_else(|| "/login".to_owned(), |p| p.join("/login"));
    let mut err = ApiError::new(
        StatusCode::FORBIDDEN,
        Reason::ReactivationRequired,
        format!(
            "This account's API keys and tokens act only within 24 hours of a web sign-in (daily re-activation), \
             and its owner has not signed in since. Ask the user to sign in at {login_url}, then retry; \
             or they can turn daily re-activation off on their dashboard."
        ),
    );
    err.login_url = Some(login_url);
    err
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        Reason::Unauthorized,
        "The API key in the Authorization header is not valid (mistyped or revoked). Send 'Authorization: Bearer aic_…' \
         with a current key (its owner gets one from the relay's operator), or no Authorization header to use a code in its first hour.",
    )
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!("access check: {e:#}");
    ApiError::internal()
}

/// An error of the store: a full or read-only disk is logged once by the
/// store and answered 503 saying so; anything else is a 500.
fn store_error(state: &AppState) -> impl Fn(anyhow::Error) -> ApiError + '_ {
    move |e| match state.store.fault("an account's request", &e) {
        Some(fault) => ApiError::storage(fault),
        None => internal(e),
    }
}

/// A machine the caller may use.
pub struct Target {
    /// What to call it in answers: its canonical code, or the alias the caller used.
    pub label: String,
    /// Its live link, if its daemon is connected to this relay.
    pub conn: Option<Arc<AgentConn>>,
    /// Its code's keyed hash: in a cluster, how another relay's link to it is found.
    pub code_hash: Digest,
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

fn fresh(state: &AppState, created: i64) -> bool {
    super::now_ms().saturating_sub(created) < state.config.anonymous_window.as_millis() as i64
}

/// Why the caller quotes a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To run a command: a first use links the account to the machine.
    Use,
    /// To look the machine up: never links anything.
    Look,
}

/// Admits `caller` to the machine `code` names, or refuses, by the access
/// rules (DESIGN.md, "Access rules"). Admitting has side effects: an
/// account's first use ([`Purpose::Use`]) links it to the machine, and every
/// use through an existing link is noted as its last use (a lookup only as
/// the key's).
pub async fn admit(state: &AppState, caller: &Caller, code: &str, purpose: Purpose) -> Result<Target, ApiError> {
    match &caller.account {
        None => admit_anonymous(state, code).await,
        Some(account) => admit_account(state, account, code, purpose).await,
    }
}

async fn admit_anonymous(state: &AppState, code: &str) -> Result<Target, ApiError> {
    let code: SessionCode = code.parse().map_err(|e| ApiError::bad_request(format!("code: {e}")))?;
    let code_hash = state.keys.code_hash(&code);
    if let Some(target) = fresh_online(state, code.canonical(), &code_hash) {
        return Ok(target);
    }
    // Every refusal goes through the same store lookup, so that unknown and
    // expired codes cost the same time as well as giving the same bytes.
    let record = state.store.agent_by_code(&code_hash).await.map_err(store_error(state))?;
    fresh_offline(state, code.canonical(), &code_hash, record)
}

/// The machine behind `code_hash`, if its daemon is connected and its code is in its first hour.
fn fresh_online(state: &AppState, label: String, code_hash: &Digest) -> Option<Target> {
    let conn = state.hub.get(code_hash).filter(|conn| fresh(state, conn.code_created_ms()))?;
    let code_created_ms = conn.code_created_ms();
    Some(Target { label, info: conn.info.clone(), code_created_ms, conn: Some(conn), code_hash: *code_hash })
}

/// The anonymous rules for a machine that is not connected: known and in its first hour, or refused alike.
fn fresh_offline(
    state: &AppState,
    label: String,
    code_hash: &Digest,
    record: Option<AgentRecord>,
) -> Result<Target, ApiError> {
    match record {
        Some(record) if fresh(state, record.code_created_ms) => Ok(Target {
            label,
            conn: None,
            code_hash: *code_hash,
            info: record.agent_info,
            code_created_ms: record.code_created_ms,
        }),
        _ => Err(ApiError::anonymous_refused()),
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Reason::NotFound,
        "No machine your account can look up has this code, and none of your account's machines has this alias. \
         Check the code (AIC-XXXX-XXXX-XXXX, from the machine's operator) or use one of your aliases; a code past \
         its first hour that your account has not used yet answers only once you run a command with it.",
    )
}

async fn admit_account(
    state: &AppState,
    account: &Account,
    quoted: &str,
    purpose: Purpose,
) -> Result<Target, ApiError> {
    let parsed = quoted.parse::<SessionCode>().ok();
    let by_code = match parsed {
        Some(code) => {
            let code_hash = state.keys.code_hash(&code);
            state.store.agent_by_code(&code_hash).await.map_err(internal)?.map(|record| (code, code_hash, record))
        }
        None => None,
    };
    let (label, code_hash, link, record) = match by_code {
        Some((code, code_hash, record)) => {
            match accounts::link_of(&state.store, record.id, account.id).await.map_err(store_error(state))? {
                Some(link) => (code.canonical(), code_hash, link, record),
                // Looking a machine up is not using it: the anonymous rules answer...
                None if purpose == Purpose::Look && fresh(state, record.code_created_ms) => {
                    let online = fresh_online(state, code.canonical(), &code_hash);
                    let offline = || fresh_offline(state, code.canonical(), &code_hash, Some(record));
                    return online.map_or_else(offline, Ok);
                }
                // ...and past the first hour the code reads as unknown, with
                // the same answer and the same lookups as an unknown code.
                None if purpose == Purpose::Look => by_alias(state, account, quoted).await?,
                None => {
                    let link = first_link(state, account, &code_hash, &record).await?;
                    (code.canonical(), code_hash, link, record)
                }
            }
        }
        None => {
            if parsed.is_some() {
                // The link lookup a known code costs (no agent has id 0), so
                // that unknown codes take as long as unlinked known ones.
                accounts::link_of(&state.store, 0, account.id).await.map_err(store_error(state))?;
            }
            by_alias(state, account, quoted).await?
        }
    };
    match link.state {
        LinkState::Pending => return Err(approval_required()),
        LinkState::Blocked => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Reason::Blocked,
                "The machine's operator has blocked this account on this machine. Ask them to unblock it (aic-console admins unblock).",
            ));
        }
        LinkState::Active => {}
    }
    match purpose {
        Purpose::Use => state.usage.note(&account.key_id, link.id, super::now_ms()),
        // Looking the machine up is not using it: the operator's "last used" stays.
        Purpose::Look => state.usage.note_key(&account.key_id, super::now_ms()),
    }
    Ok(target(state, label, &code_hash, record))
}

/// One of the account's aliases (which may look like a code): its label, code hash, link and machine.
async fn by_alias(
    state: &AppState,
    account: &Account,
    quoted: &str,
) -> Result<(String, Digest, Link, AgentRecord), ApiError> {
    let link = accounts::link_by_alias(&state.store, account.id, quoted.trim())
        .await
        .map_err(store_error(state))?
        .ok_or_else(not_found)?;
    let (hash, record) =
        state.store.agent_by_id(link.agent_id).await.map_err(store_error(state))?.ok_or_else(not_found)?;
    let hash: Digest = hash.try_into().map_err(|_| ApiError::internal())?;
    Ok((link.alias.clone(), hash, link, record))
}

/// The machine, live if its daemon is connected, else as the store last saw it.
fn target(state: &AppState, label: String, code_hash: &Digest, record: AgentRecord) -> Target {
    match state.hub.get(code_hash) {
        Some(conn) => Target {
            label,
            info: conn.info.clone(),
            code_created_ms: conn.code_created_ms(),
            conn: Some(conn),
            code_hash: *code_hash,
        },
        None => Target {
            label,
            conn: None,
            code_hash: *code_hash,
            info: record.agent_info,
            code_created_ms: record.code_created_ms,
        },
    }
}

fn approval_required() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        Reason::ApprovalRequired,
        "This account's link to the machine waits for its operator's approval (aic-console admins approve N on the machine). \
         Ask them to approve it, then retry.",
    )
}

/// An account's first use of a machine: linked at once during the code's
/// first hour, else pending until the operator approves (and told so).
async fn first_link(
    state: &AppState,
    account: &Account,
    code_hash: &Digest,
    record: &AgentRecord,
) -> Result<Link, ApiError> {
    let agent_id = record.id;
    let link_state = if fresh(state, record.code_created_ms) { LinkState::Active } else { LinkState::Pending };
    let hostname = &record.agent_info.hostname;
    let link = accounts::create_link(&state.store, agent_id, account.id, hostname, link_state, super::now_ms())
        .await
        .map_err(store_error(state))?;
    state.store.wrote();
    tracing::info!(agent = agent_id, link = link.id, state = link.state.as_str(), "account linked");
    if let Some(conn) = state.hub.get(code_hash) {
        conn.send(RelayMessage::AccountsChanged);
    } else if let Some(cluster) = &state.cluster {
        cluster.accounts_changed(code_hash).await;
    }
    Ok(link)
}
