//! Accounts, their API keys, and their links to machines, in the relay's
//! store. Keys are `aic_<key id>_<secret>`; only a keyed hash of the secret
//! is stored, looked up by key id and compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::Row;

use super::keys::{self, Keys};
use super::store::Store;

/// What a key starts with, so it is recognisable (and greppable by secret scanners).
pub const KEY_PREFIX: &str = "aic_";

pub use crate::protocol::control::LinkState;

/// A stored state word as a state; an unknown word is treated as blocked.
fn parse_state(text: &str) -> LinkState {
    match text {
        "active" => LinkState::Active,
        "pending" => LinkState::Pending,
        _ => LinkState::Blocked,
    }
}

/// An account as `account list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountRow {
    /// Row id.
    pub id: i64,
    /// Full email (never sent to a daemon).
    pub email: String,
    /// Unix ms.
    pub created_at: i64,
    /// Keys not revoked.
    pub keys: i64,
    /// Machines linked.
    pub links: i64,
}

/// An API key as `key list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRow {
    /// The public part of the key.
    pub key_id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; updated in batches, so up to a minute behind.
    pub last_used_at: Option<i64>,
    /// Unix ms, once revoked.
    pub revoked_at: Option<i64>,
}

/// A link between an account and a machine.
#[derive(Debug, Clone)]
pub struct Link {
    /// Row id; the operator's console names accounts by it.
    pub id: i64,
    /// The machine.
    pub agent_id: i64,
    /// The account: blocking it stops its commands, and its fingerprint tells it apart.
    pub account_id: i64,
    /// The account's name for the machine.
    pub alias: String,
    /// Active, pending or blocked.
    pub state: LinkState,
    /// Unix ms.
    pub linked_at: i64,
    /// Unix ms.
    pub last_used_at: Option<i64>,
}

/// An account authenticated by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Row id.
    pub id: i64,
    /// Full email; shown to operators only masked.
    pub email: String,
    /// The key it used, for `last_used_at`.
    pub key_id: String,
    /// With daily re-activation on: until when (Unix ms) its keys act, a day
    /// after its last web sign-in (0 if it never signed in). None: always.
    pub active_until: Option<i64>,
}

/// How long after a web sign-in an account's keys and tokens act, with daily re-activation on.
pub const REACTIVATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `a.daily_reactivation` as a number a row can carry through the `Any`
/// driver (SQLite's BOOLEAN cannot): 1 on, 0 off.
pub const REACTIVATION_FLAG: &str = "CASE WHEN a.daily_reactivation THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END";

/// Until when an account's keys act: `None` with daily re-activation off.
pub fn active_until(daily_reactivation: bool, last_sign_in_at: Option<i64>) -> Option<i64> {
    daily_reactivation.then(|| last_sign_in_at.map_or(0, |t| t + REACTIVATION_WINDOW.as_millis() as i64))
}

/// Normalises and checks an email address.
pub fn normalize_email(email: &str) -> anyhow::Result<String> {
    let email = email.trim().to_lowercase();
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace) => {
            Ok(email)
        }
        _ => bail!("{email:?} is not an email address (like ops@example.com)"),
    }
}

fn new_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `aic_<id>_<secret>`.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn key_hash(keys: &Keys, key_id: &str, secret: &str) -> [u8; 32] {
    keys.token_hash(&format!("api key\0{key_id}\0{secret}"))
}

/// Adds an account with its first key; returns the key (shown once). The
/// operator vouches for it, so daily re-activation starts off.
pub async fn add_account(store: &Store, keys: &Keys, email: &str, now: i64) -> anyhow::Result<String> {
    let email = normalize_email(email)?;
    let created = sqlx::query(
        "INSERT INTO accounts (email, created_at, daily_reactivation) VALUES ($1, $2, FALSE) ON CONFLICT (email) DO NOTHING",
    )
    .bind(&email)
    .bind(now)
    .execute(store.pool())
    .await?;
    if created.rows_affected() == 0 {
        bail!("an account for {email} already exists; make it another key with `aic-relay key create {email}`");
    }
    create_key(store, keys, &email, now).await
}

/// All accounts.
pub async fn list_accounts(store: &Store) -> anyhow::Result<Vec<AccountRow>> {
    let rows = sqlx::query(
        "SELECT a.id, a.email, a.created_at,
            (SELECT COUNT(*) FROM api_keys k WHERE k.account_id = a.id AND k.revoked_at IS NULL),
            (SELECT COUNT(*) FROM links l WHERE l.account_id = a.id)
         FROM accounts a ORDER BY a.email",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| AccountRow { id: r.get(0), email: r.get(1), created_at: r.get(2), keys: r.get(3), links: r.get(4) })
        .collect())
}

/// Removes an account, its keys and its links.
pub async fn remove_account(store: &Store, email: &str) -> anyhow::Result<()> {
    let email = normalize_email(email)?;
    let done = sqlx::query("DELETE FROM accounts WHERE email = $1").bind(&email).execute(store.pool()).await?;
    if done.rows_affected() == 0 {
        bail!("no account for {email}; list them with `aic-relay account list`");
    }
    Ok(())
}

async fn account_id(store: &Store, email: &str) -> anyhow::Result<i64> {
    let email = normalize_email(email)?;
    sqlx::query("SELECT id FROM accounts WHERE email = $1")
        .bind(&email)
        .fetch_optional(store.pool())
        .await?
        .map(|r| r.get(0))
        .with_context(|| format!("no account for {email}; add it with `aic-relay account add {email}`"))
}

/// Makes a new key for an account; returns it (shown once).
pub async fn create_key(store: &Store, keys: &Keys, email: &str, now: i64) -> anyhow::Result<String> {
    let account = account_id(store, email).await?;
    let key_id = new_hex(8);
    let secret = new_hex(32);
    sqlx::query("INSERT INTO api_keys (key_id, account_id, secret_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&key_id)
        .bind(account)
        .bind(&key_hash(keys, &key_id, &secret)[..])
        .bind(now)
        .execute(store.pool())
        .await?;
    Ok(format!("{KEY_PREFIX}{key_id}_{secret}"))
}

/// An account's keys.
pub async fn list_keys(store: &Store, email: &str) -> anyhow::Result<Vec<KeyRow>> {
    let account = account_id(store, email).await?;
    let rows = sqlx::query(
        "SELECT key_id, created_at, last_used_at, revoked_at FROM api_keys WHERE account_id = $1 ORDER BY created_at",
    )
    .bind(account)
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| KeyRow { key_id: r.get(0), created_at: r.get(1), last_used_at: r.get(2), revoked_at: r.get(3) })
        .collect())
}

/// Revokes a key by its id (the part after `aic_`, or the whole key).
pub async fn revoke_key(store: &Store, key_id: &str, now: i64) -> anyhow::Result<()> {
    let key_id = parse_key(key_id).map_or(key_id, |(id, _)| id);
    let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(key_id)
        .execute(store.pool())
        .await?;
    if done.rows_affected() == 0 {
        bail!("no active key {key_id}; list an account's keys with `aic-relay key list EMAIL`");
    }
    Ok(())
}

/// The account a bearer key belongs to, if the key is valid and not revoked.
pub async fn authenticate(store: &Store, keys: &Keys, key: &str) -> anyhow::Result<Option<Account>> {
    let Some((key_id, secret)) = parse_key(key) else { return Ok(None) };
    let sql = format!(
        "SELECT k.secret_hash, k.revoked_at, a.id, a.email, {REACTIVATION_FLAG}, a.last_sign_in_at
         FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_id = $1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key_id).fetch_optional(store.pool()).await?;
    let Some(row) = row else { return Ok(None) };
    let stored: Vec<u8> = row.get(0);
    let revoked: Option<i64> = row.get(1);
    if revoked.is_some() || !keys::digest_eq(&key_hash(keys, key_id, secret), &stored) {
        return Ok(None);
    }
    let active_until = active_until(row.get::<i64, _>(4) != 0, row.get(5));
    Ok(Some(Account { id: row.get(2), email: row.get(3), key_id: key_id.to_owned(), active_until }))
}

const LINK_COLUMNS: &str = "id, agent_id, account_id, alias, state, linked_at, last_used_at";

fn link(r: &super::store::AnyRow) -> Link {
    Link {
        id: r.get(0),
        agent_id: r.get(1),
        account_id: r.get(2),
        alias: r.get(3),
        state: parse_state(r.get::<&str, _>(4)),
        linked_at: r.get(5),
        last_used_at: r.get(6),
    }
}

/// The link between an account and a machine, if any.
pub async fn link_of(store: &Store, agent_id: i64, account_id: i64) -> anyhow::Result<Option<Link>> {
    let sql = format!("SELECT {LINK_COLUMNS} FROM links WHERE agent_id = $1 AND account_id = $2");
    let row =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(agent_id).bind(account_id).fetch_optional(store.pool()).await?;
    Ok(row.as_ref().map(link))
}

/// An account's link by alias (case-insensitive).
pub async fn link_by_alias(store: &Store, account_id: i64, alias: &str) -> anyhow::Result<Option<Link>> {
    let sql = format!("SELECT {LINK_COLUMNS} FROM links WHERE account_id = $1 AND LOWER(alias) = LOWER($2)");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id).bind(alias).fetch_optional(store.pool()).await?;
    Ok(row.as_ref().map(link))
}

/// Links an account to a machine under the machine's host name, made unique
/// among the account's aliases (`web`, `web-2`, …).
pub async fn create_link(
    store: &Store,
    agent_id: i64,
    account_id: i64,
    hostname: &str,
    state: LinkState,
    now: i64,
) -> anyhow::Result<Link> {
    let base: String =
        hostname.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(48).collect();
    let base = if base.is_empty() { "machine".to_owned() } else { base };
    // Concurrent first uses may race for the same alias or the same link:
    // whichever insert loses does nothing, and the loop looks again.
    for _ in 0..5 {
        if let Some(link) = link_of(store, agent_id, account_id).await? {
            return Ok(link);
        }
        let taken: Vec<String> = sqlx::query("SELECT LOWER(alias) FROM links WHERE account_id = $1")
            .bind(account_id)
            .fetch_all(store.pool())
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let alias = (1..)
            .map(|n| if n == 1 { base.clone() } else { format!("{base}-{n}") })
            .find(|a| !taken.contains(&a.to_lowercase()))
            .expect("an unused alias exists");
        sqlx::query(
            "INSERT INTO links (agent_id, account_id, alias, state, linked_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(agent_id)
        .bind(account_id)
        .bind(&alias)
        .bind(state.as_str())
        .bind(now)
        .execute(store.pool())
        .await?;
    }
    link_of(store, agent_id, account_id).await?.context("could not link the account after several tries")
}

/// A machine's links with each account's full email (to be masked before it leaves).
pub async fn links_of_agent(store: &Store, agent_id: i64) -> anyhow::Result<Vec<(Link, String)>> {
    let rows = sqlx::query(
        "SELECT l.id, l.agent_id, l.account_id, l.alias, l.state, l.linked_at, l.last_used_at, a.email
         FROM links l JOIN accounts a ON a.id = l.account_id WHERE l.agent_id = $1 ORDER BY l.linked_at, l.id",
    )
    .bind(agent_id)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(|r| (link(r), r.get(7))).collect())
}

/// Sets a link of this machine to `state`, if it is in one of `from`.
pub async fn set_link_state(
    store: &Store,
    agent_id: i64,
    link_id: i64,
    from: &[LinkState],
    state: LinkState,
) -> anyhow::Result<bool> {
    let current = sqlx::query("SELECT state FROM links WHERE id = $1 AND agent_id = $2")
        .bind(link_id)
        .bind(agent_id)
        .fetch_optional(store.pool())
        .await?;
    let Some(current) = current.map(|r| parse_state(r.get::<&str, _>(0))) else { return Ok(false) };
    if !from.contains(&current) {
        return Ok(false);
    }
    sqlx::query("UPDATE links SET state = $1 WHERE id = $2 AND agent_id = $3")
        .bind(state.as_str())
        .bind(link_id)
        .bind(agent_id)
        .execute(store.pool())
        .await?;
    Ok(true)
}

/// An account as its own dashboard shows it.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Full email (shown only to the account itself).
    pub email: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last web sign-in, if any.
    pub last_sign_in_at: Option<i64>,
    /// Whether its keys and tokens act only within a day of a web sign-in.
    pub daily_reactivation: bool,
}

/// An account by row id.
pub async fn profile(store: &Store, account_id: i64) -> anyhow::Result<Option<Profile>> {
    let sql =
        format!("SELECT a.email, a.created_at, a.last_sign_in_at, {REACTIVATION_FLAG} FROM accounts a WHERE a.id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id).fetch_optional(store.pool()).await?;
    Ok(row.map(|r| Profile {
        email: r.get(0),
        created_at: r.get(1),
        last_sign_in_at: r.get(2),
        daily_reactivation: r.get::<i64, _>(3) != 0,
    }))
}

/// Turns daily re-activation on or off for an account (by email).
pub async fn set_daily_reactivation(store: &Store, email: &str, on: bool) -> anyhow::Result<()> {
    let account = account_id(store, email).await?;
    set_daily_reactivation_of(store, account, on).await
}

/// Turns daily re-activation on or off for an account (by id).
pub async fn set_daily_reactivation_of(store: &Store, account_id: i64, on: bool) -> anyhow::Result<()> {
    sqlx::query("UPDATE accounts SET daily_reactivation = $1 WHERE id = $2")
        .bind(on)
        .bind(account_id)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Revokes one of an account's own keys; false if it has no such active key.
pub async fn revoke_own_key(store: &Store, account_id: i64, key_id: &str, now: i64) -> anyhow::Result<bool> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND account_id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(key_id)
            .bind(account_id)
            .execute(store.pool())
            .await?;
    Ok(done.rows_affected() == 1)
}

/// A machine an account is linked to, as its dashboard lists it.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The link.
    pub link: Link,
    /// The keyed hash of the machine's code, to ask the hub whether it is online.
    pub code_hash: Vec<u8>,
    /// What its daemon last said about it (JSON).
    pub agent_info: String,
}

/// An account's machines, by alias.
pub async fn machines_of_account(store: &Store, account_id: i64) -> anyhow::Result<Vec<Machine>> {
    let rows = sqlx::query(
        "SELECT l.id, l.agent_id, l.account_id, l.alias, l.state, l.linked_at, l.last_used_at, g.code_hash, g.agent_info
         FROM links l JOIN agents g ON g.id = l.agent_id WHERE l.account_id = $1 ORDER BY LOWER(l.alias)",
    )
    .bind(account_id)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(|r| Machine { link: link(r), code_hash: r.get(7), agent_info: r.get(8) }).collect())
}

/// Why an alias cannot be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    /// Not 1 to 48 letters, digits, `.`, `_` or `-`, or shaped like a session code.
    #[error("an alias is 1 to 48 letters, digits, dots, dashes or underscores, and not shaped like a code")]
    Invalid,
    /// Another of the account's machines has it.
    #[error("another of your machines already has that alias")]
    Taken,
    /// The account has no such link.
    #[error("no such machine")]
    NotFound,
}

/// Renames one of an account's links.
pub async fn rename_link(
    store: &Store,
    account_id: i64,
    link_id: i64,
    alias: &str,
) -> anyhow::Result<Result<(), RenameError>> {
    let alias = alias.trim();
    let valid = (1..=48).contains(&alias.len())
        && alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && alias.parse::<crate::protocol::SessionCode>().is_err();
    if !valid {
        return Ok(Err(RenameError::Invalid));
    }
    let clash = sqlx::query("SELECT id FROM links WHERE account_id = $1 AND LOWER(alias) = LOWER($2) AND id <> $3")
        .bind(account_id)
        .bind(alias)
        .bind(link_id)
        .fetch_optional(store.pool())
        .await?;
    if clash.is_some() {
        return Ok(Err(RenameError::Taken));
    }
    let done = sqlx::query("UPDATE links SET alias = $1 WHERE id = $2 AND account_id = $3")
        .bind(alias)
        .bind(link_id)
        .bind(account_id)
        .execute(store.pool())
        .await;
    match done {
        Ok(done) if done.rows_affected() == 1 => Ok(Ok(())),
        Ok(_) => Ok(Err(RenameError::NotFound)),
        // A concurrent rename took the alias between the check and the update.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Err(RenameError::Taken)),
        Err(e) => Err(e.into()),
    }
}

/// Last-used times noted in memory and written in batches, so the exec path
/// never waits on a database write.
#[derive(Default)]
pub struct Usage {
    keys: Mutex<HashMap<String, i64>>,
    links: Mutex<HashMap<i64, i64>>,
    /// OAuth grants (account, client) whose access tokens acted, for the dashboard's "last used".
    grants: Mutex<HashMap<(i64, String), i64>>,
}

impl Usage {
    /// Notes that a key and a link were used now.
    pub fn note(&self, key_id: &str, link_id: i64, now: i64) {
        self.note_key(key_id, now);
        self.links.lock().unwrap().insert(link_id, now);
    }

    /// Notes that a key was used now, for a request that used no link.
    pub fn note_key(&self, key_id: &str, now: i64) {
        self.keys.lock().unwrap().insert(key_id.to_owned(), now);
    }

    /// Notes that an OAuth client acted for an account now, with an access token.
    pub fn note_grant(&self, account_id: i64, client_id: &str, now: i64) {
        self.grants.lock().unwrap().insert((account_id, client_id.to_owned()), now);
    }

    /// Writes what has been noted since the last flush. What could not be
    /// written (a full disk) is kept for the next one, unless newer times came.
    pub async fn flush(&self, store: &Store) -> anyhow::Result<()> {
        write_times(&self.grants, store, |(account_id, client_id), at| {
            sqlx::query(
                "UPDATE oauth_grants SET last_used_at = $1 WHERE account_id = $2 AND client_id = $3 AND last_used_at < $1",
            )
            .bind(at)
            .bind(*account_id)
            .bind(client_id.as_str())
        })
        .await?;
        write_times(&self.keys, store, |key_id, at| {
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE key_id = $2").bind(at).bind(key_id.as_str())
        })
        .await?;
        write_times(&self.links, store, |link_id, at| {
            sqlx::query("UPDATE links SET last_used_at = $1 WHERE id = $2").bind(at).bind(*link_id)
        })
        .await
    }
}

/// Writes each time taken from `noted` with the update `query` makes for it;
/// at the first failure, what is not written goes back (see [`keep`]).
async fn write_times<K: std::hash::Hash + Eq>(
    noted: &Mutex<HashMap<K, i64>>,
    store: &Store,
    query: impl for<'k> Fn(&'k K, i64) -> sqlx::query::Query<'k, sqlx::Any, sqlx::any::AnyArguments>,
) -> anyhow::Result<()> {
    let taken = std::mem::take(&mut *noted.lock().unwrap());
    let mut taken = taken.into_iter().peekable();
    while let Some((k, at)) = taken.peek() {
        if let Err(e) = query(k, *at).execute(store.pool()).await {
            keep(noted, taken);
            return Err(e.into());
        }
        taken.next();
    }
    Ok(())
}

/// Puts times that were not written back, where no newer one was noted since.
fn keep<K: std::hash::Hash + Eq>(into: &Mutex<HashMap<K, i64>>, unwritten: impl IntoIterator<Item = (K, i64)>) {
    let mut into = into.lock().unwrap();
    for (k, at) in unwritten {
        let noted = into.entry(k).or_insert(at);
        *noted = (*noted).max(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_id_and_secret() {
        assert_eq!(parse_key("aic_0123abcd_s3cr3t"), Some(("0123abcd", "s3cr3t")));
        for bad in ["", "aic_", "aic__x", "aic_id_", "sk_id_secret", "aic_nosecret"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email(" Ops@Example.COM ").unwrap(), "ops@example.com");
        for bad in ["ops", "@example.com", "ops@localhost", "o ps@example.com"] {
            assert!(normalize_email(bad).unwrap_err().to_string().contains("is not an email address"), "{bad}");
        }
    }
}
