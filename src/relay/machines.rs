//! An account's machines: `GET /api/v1/machines` lists them (alias, host,
//! OS, online, link state, last use) and `PATCH /api/v1/machines/{alias}`
//! renames one. [`list`] and [`rename`] are plain functions over the store and
//! the hub, so the web dashboard and the MCP `list_machines` tool use them too.
//!
//! Codes are not listed: the relay keeps only a keyed hash of each, so it has
//! none to show. An alias works wherever a code does, for its account.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::AppState;
use super::access::{self, Caller};
use super::accounts::Account;
use super::cluster::Cluster;
use super::error::{ApiError, ErrorBody, Reason};
use super::hub::Hub;
use super::store::Store;
use crate::protocol::SessionCode;
use crate::protocol::agent::AgentInfo;
use crate::protocol::control::LinkState;

/// One machine of an account, as the account sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"alias": "web-1", "hostname": "web-1", "os": "linux", "arch": "x86_64", "online": true, "link": "active", "linkedMs": 1764460800000u64, "lastUsedMs": 1764464400000u64}))]
pub struct Machine {
    /// The account's name for it; use it as the `code` of any call.
    pub alias: String,
    /// Its host name, as its daemon last said.
    pub hostname: String,
    /// Its operating system (`linux`, `macos`).
    pub os: String,
    /// Its CPU architecture.
    pub arch: String,
    /// Whether its daemon is connected now.
    pub online: bool,
    /// `active`; `pending`: waits for its operator's approval; `blocked`: its operator blocked this account.
    #[schema(value_type = String, example = "active")]
    #[schemars(with = "String")]
    pub link: LinkState,
    /// When the account was linked to it (Unix ms).
    pub linked_ms: i64,
    /// When the account last used it (Unix ms), absent if never; written in batches, so up to a minute behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_used_ms: Option<i64>,
}

/// The body of `GET /api/v1/machines`, and the structured result of `list_machines`.
#[derive(Debug, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct MachineList {
    /// Always true.
    pub ok: bool,
    /// The account's machines, by alias.
    pub machines: Vec<Machine>,
}

impl MachineList {
    /// A few lines a model or a person reads.
    pub fn describe(&self) -> String {
        if self.machines.is_empty() {
            return "This account has no machines yet: a machine is linked the first time the account runs a \
command with its session code (AIC-XXXX-XXXX-XXXX, from the machine's operator)."
                .into();
        }
        let lines: Vec<String> = self
            .machines
            .iter()
            .map(|m| {
                let online = if m.online { "online" } else { "offline" };
                format!("{}: {} ({} {}), {online}, link {}", m.alias, m.hostname, m.os, m.arch, m.link.as_str())
            })
            .collect();
        format!("{} machine(s); use the alias as the code:\n{}", lines.len(), lines.join("\n"))
    }
}

/// The machines linked to `account_id`, by alias, online as `hub` sees them
/// now or, for a link held by another relay, as the `cluster`'s presence says.
pub async fn list(
    store: &Store,
    hub: &Hub,
    cluster: Option<&Cluster>,
    account_id: i64,
) -> anyhow::Result<Vec<Machine>> {
    let rows = sqlx::query(
        "SELECT l.alias, l.state, l.linked_at, l.last_used_at, a.agent_info, a.code_hash
         FROM links l JOIN agents a ON a.id = l.agent_id WHERE l.account_id = $1 ORDER BY LOWER(l.alias)",
    )
    .bind(account_id)
    .fetch_all(store.pool())
    .await?;
    let mut machines = Vec::with_capacity(rows.len());
    for r in &rows {
        let info: AgentInfo = serde_json::from_str(r.get::<&str, _>(4)).unwrap_or_default();
        let hash: Vec<u8> = r.get(5);
        let online = match (<[u8; 32]>::try_from(hash.as_slice()), cluster) {
            (Ok(h), _) if hub.get(&h).is_some() => true,
            (Ok(h), Some(cluster)) => cluster.online(&h).await,
            _ => false,
        };
        machines.push(Machine {
            alias: r.get(0),
            hostname: info.hostname,
            os: info.os,
            arch: info.arch,
            online,
            link: parse_state(r.get::<&str, _>(1)),
            linked_ms: r.get(2),
            last_used_ms: r.get(3),
        });
    }
    Ok(machines)
}

/// A stored state word as a state; an unknown word reads as blocked, as in the access rules.
fn parse_state(word: &str) -> LinkState {
    match word {
        "active" => LinkState::Active,
        "pending" => LinkState::Pending,
        _ => LinkState::Blocked,
    }
}

/// Why an alias could not be renamed.
#[derive(Debug, thiserror::Error)]
pub enum RenameError {
    /// The account has no machine by that alias.
    #[error("this account has no machine with the alias {0:?}; list them with GET /api/v1/machines")]
    NotFound(String),
    /// The new alias is not one an alias may be.
    #[error(
        "an alias is 1 to 48 letters, digits, '.', '-' or '_', and must not look like a session code; {0:?} is not"
    )]
    Invalid(String),
    /// Another machine of the account has it.
    #[error("another of this account's machines is already called {0:?}; pick another alias")]
    Taken(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Whether `alias` may be an alias: short, plain, and not mistakable for a code.
pub fn valid_alias(alias: &str) -> bool {
    (1..=48).contains(&alias.len())
        && alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && alias.parse::<SessionCode>().is_err()
}

/// Renames the account's machine `alias` to `new` (aliases compare without case).
pub async fn rename(store: &Store, account_id: i64, alias: &str, new: &str) -> Result<(), RenameError> {
    let new = new.trim();
    if !valid_alias(new) {
        return Err(RenameError::Invalid(new.to_owned()));
    }
    let link = super::accounts::link_by_alias(store, account_id, alias.trim())
        .await?
        .ok_or_else(|| RenameError::NotFound(alias.to_owned()))?;
    if let Some(other) = super::accounts::link_by_alias(store, account_id, new).await?
        && other.id != link.id
    {
        return Err(RenameError::Taken(new.to_owned()));
    }
    let done = sqlx::query("UPDATE links SET alias = $1 WHERE id = $2 AND account_id = $3")
        .bind(new)
        .bind(link.id)
        .bind(account_id)
        .execute(store.pool())
        .await;
    match done {
        Ok(_) => Ok(()),
        // Another rename took the alias in between: the unique index says so.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(RenameError::Taken(new.to_owned())),
        Err(e) => Err(RenameError::Store(e.into())),
    }
}

/// The account behind a caller, or 401 saying one is needed.
pub fn account(caller: &Caller) -> Result<&Account, ApiError> {
    caller.account.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            Reason::Unauthorized,
            "Listing machines needs an account: send 'Authorization: Bearer aic_…' with an API key (its owner gets \
             one from the relay's operator). Without one, use a machine's session code directly.",
        )
    })
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!("machines: {e:#}");
    ApiError::internal()
}

/// The caller's machines.
pub async fn list_for(state: &AppState, caller: &Caller) -> Result<MachineList, ApiError> {
    let account = account(caller)?;
    let machines = list(&state.store, &state.hub, state.cluster.as_deref(), account.id).await.map_err(internal)?;
    Ok(MachineList { ok: true, machines })
}

/// `GET /api/v1/machines`.
#[utoipa::path(
    get,
    path = "/api/v1/machines",
    tag = "machines",
    summary = "List an account's machines",
    description = "The machines linked to the caller's account, by alias: host name, OS, whether the daemon is \
online, the link's state and when it was last used. Codes are not listed (the relay keeps only a keyed hash of \
each); use the alias as the `code` of any call.",
    responses(
        (status = 200, description = "The account's machines", body = MachineList),
        (status = 401, description = "`unauthorized`: no API key (an account is needed), or one that is not valid", body = ErrorBody),
    )
)]
pub async fn get_machines(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = access::authenticate(&state, &headers, peer).await?;
    Ok(Json(list_for(&state, &caller).await?).into_response())
}

/// The answer of `PATCH /api/v1/machines/{alias}`: `ok` like every other answer, then the machine's fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Renamed {
    /// Always true; lets a client check every answer of the API the same way.
    pub ok: bool,
    /// The machine as it is now, its fields at the top level beside `ok`.
    #[serde(flatten)]
    pub machine: Machine,
}

/// The body of `PATCH /api/v1/machines/{alias}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"alias": "web-prod"}))]
pub struct RenameParams {
    /// The new alias: 1 to 48 letters, digits, `.`, `-` or `_`.
    pub alias: String,
}

/// `PATCH /api/v1/machines/{alias}`.
#[utoipa::path(
    patch,
    path = "/api/v1/machines/{alias}",
    tag = "machines",
    summary = "Rename a machine's alias",
    params(("alias" = String, Path, description = "The machine's current alias")),
    request_body(content = RenameParams, content_type = "application/json"),
    responses(
        (status = 200, description = "Renamed; the machine as it is now", body = Renamed),
        (status = 400, description = "`bad_request`: not a valid alias", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key (an account is needed), or one that is not valid", body = ErrorBody),
        (status = 404, description = "`not_found`: no machine of the account has this alias", body = ErrorBody),
        (status = 409, description = "`exists`: another machine of the account has the new alias", body = ErrorBody),
    )
)]
pub async fn patch_machine(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(alias): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = access::authenticate(&state, &headers, peer).await?;
    let account = account(&caller)?;
    let body = body.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
    let params: RenameParams = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("send the new alias as JSON: {\"alias\": \"web-prod\"}"))?;
    rename(&state.store, account.id, &alias, &params.alias).await.map_err(|e| match e {
        RenameError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, Reason::NotFound, e.to_string()),
        RenameError::Invalid(_) => ApiError::bad_request(e.to_string()),
        RenameError::Taken(_) => ApiError::new(StatusCode::CONFLICT, Reason::Exists, e.to_string()),
        RenameError::Store(e) => internal(e),
    })?;
    let machines = list(&state.store, &state.hub, state.cluster.as_deref(), account.id).await.map_err(internal)?;
    let renamed = machines.into_iter().find(|m| m.alias.eq_ignore_ascii_case(params.alias.trim()));
    let machine = renamed.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Reason::NotFound,
            "the machine was renamed, then unlinked; list the machines again",
        )
    })?;
    Ok(Json(Renamed { ok: true, machine }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_plain_and_never_look_like_codes() {
        for ok in ["web", "web-2", "db_primary.eu", "a"] {
            assert!(valid_alias(ok), "{ok}");
        }
        let code = SessionCode::generate().to_string();
        for bad in ["", "has space", "ünï", &"x".repeat(49), &code, &code.replace('-', "")] {
            assert!(!valid_alias(bad), "{bad}");
        }
    }
}
