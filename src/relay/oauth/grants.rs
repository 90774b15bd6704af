//! OAuth state in the store: registered clients, one-use authorization codes,
//! and access and refresh tokens. Codes and tokens are stored only as keyed
//! hashes; each is bound to its client, its account and its resource.

use std::time::Duration;

use sqlx::Row;

use crate::relay::keys::Keys;
use crate::relay::signin::new_secret;
use crate::relay::store::Store;

/// How long an authorization code can be exchanged.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// How long an access token acts.
pub const ACCESS_LIFETIME: Duration = Duration::from_secs(3600);

/// How long a refresh token can be used (once: each use gives a new one).
pub const REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// A registration no token came of for this long is deleted.
pub const UNUSED_CLIENT: Duration = Duration::from_secs(86_400);

/// Prefix of access tokens, telling them from API keys at a glance.
pub const ACCESS_PREFIX: &str = "aico_";

/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "aicr_";

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// A client registered by Dynamic Client Registration.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its name, shown on the consent page.
    pub name: String,
    /// The redirect URIs it registered.
    pub redirect_uris: Vec<String>,
}

/// Stores a DCR client; returns its new `client_id`.
pub async fn register(store: &Store, name: &str, redirect_uris: &[String], now: i64) -> anyhow::Result<String> {
    let client_id = format!("aicc_{}", &new_secret()[..32]);
    sqlx::query(
        "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&client_id)
    .bind(name)
    .bind(serde_json::to_string(redirect_uris)?)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(client_id)
}

/// A DCR client by id.
pub async fn registered(store: &Store, client_id: &str) -> anyhow::Result<Option<Registered>> {
    let row = sqlx::query("SELECT client_name, redirect_uris FROM oauth_clients WHERE client_id = $1")
        .bind(client_id)
        .fetch_optional(store.pool())
        .await?;
    Ok(row.map(|r| Registered {
        name: r.get(0),
        redirect_uris: serde_json::from_str(r.get::<&str, _>(1)).unwrap_or_default(),
    }))
}

/// What an authorization code was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The client it was issued to.
    pub client_id: String,
    /// The account that consented.
    pub account_id: i64,
    /// Where the code was sent; the token request must name the same.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The resource (RFC 8707) the tokens act on.
    pub resource: String,
}

/// Stores a new code for `grant`; returns it.
pub async fn issue_code(store: &Store, keys: &Keys, grant: &Grant, now: i64) -> anyhow::Result<String> {
    let code = new_secret();
    sqlx::query(
        "INSERT INTO oauth_codes (code_hash, client_id, account_id, redirect_uri, code_challenge, resource, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&keys.web_hash("oauth code", &code)[..])
    .bind(&grant.client_id)
    .bind(grant.account_id)
    .bind(&grant.redirect_uri)
    .bind(&grant.code_challenge)
    .bind(&grant.resource)
    .bind(now + ms(CODE_LIFETIME))
    .execute(store.pool())
    .await?;
    Ok(code)
}

/// Spends a code (one atomic update: only one request can win) and returns its grant.
pub async fn take_code(store: &Store, keys: &Keys, code: &str, now: i64) -> anyhow::Result<Option<Grant>> {
    let hash = keys.web_hash("oauth code", code);
    let won =
        sqlx::query("UPDATE oauth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1")
            .bind(now)
            .bind(&hash[..])
            .execute(store.pool())
            .await?;
    if won.rows_affected() != 1 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT client_id, account_id, redirect_uri, code_challenge, resource FROM oauth_codes WHERE code_hash = $1",
    )
    .bind(&hash[..])
    .fetch_one(store.pool())
    .await?;
    Ok(Some(Grant {
        client_id: row.get(0),
        account_id: row.get(1),
        redirect_uri: row.get(2),
        code_challenge: row.get(3),
        resource: row.get(4),
    }))
}

/// An access token and the refresh token that replaces it.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Acts as the account for [`ACCESS_LIFETIME`].
    pub access: String,
    /// Buys the next pair, once.
    pub refresh: String,
}

/// Issues a fresh pair for a grant's client, account and resource, and notes the client as used.
pub async fn issue_tokens(store: &Store, keys: &Keys, grant: &Grant, now: i64) -> anyhow::Result<Tokens> {
    let tokens = Tokens {
        access: format!("{ACCESS_PREFIX}{}", new_secret()),
        refresh: format!("{REFRESH_PREFIX}{}", new_secret()),
    };
    for (kind, token, lifetime) in
        [("access", &tokens.access, ACCESS_LIFETIME), ("refresh", &tokens.refresh, REFRESH_LIFETIME)]
    {
        sqlx::query(
            "INSERT INTO oauth_tokens (token_hash, kind, client_id, account_id, resource, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&keys.web_hash("oauth token", token)[..])
        .bind(kind)
        .bind(&grant.client_id)
        .bind(grant.account_id)
        .bind(&grant.resource)
        .bind(now + ms(lifetime))
        .execute(store.pool())
        .await?;
    }
    sqlx::query("UPDATE oauth_clients SET last_used_at = $1 WHERE client_id = $2")
        .bind(now)
        .bind(&grant.client_id)
        .execute(store.pool())
        .await?;
    Ok(tokens)
}

/// Spends a refresh token of `client_id` (once: a second use finds nothing)
/// and returns what it was bound to.
pub async fn take_refresh(
    store: &Store,
    keys: &Keys,
    token: &str,
    client_id: &str,
    now: i64,
) -> anyhow::Result<Option<Grant>> {
    let hash = keys.web_hash("oauth token", token);
    let won = sqlx::query(
        "UPDATE oauth_tokens SET used_at = $1
         WHERE token_hash = $2 AND kind = 'refresh' AND client_id = $3 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(&hash[..])
    .bind(client_id)
    .execute(store.pool())
    .await?;
    if won.rows_affected() != 1 {
        return Ok(None);
    }
    let row = sqlx::query("SELECT account_id, resource FROM oauth_tokens WHERE token_hash = $1")
        .bind(&hash[..])
        .fetch_one(store.pool())
        .await?;
    Ok(Some(Grant {
        client_id: client_id.to_owned(),
        account_id: row.get(0),
        redirect_uri: String::new(),
        code_challenge: String::new(),
        resource: row.get(1),
    }))
}

/// The account and email an access token acts as, with its resource, its
/// client, and the account's re-activation settings.
#[derive(Debug, Clone)]
pub struct Bearer {
    /// The account.
    pub account_id: i64,
    /// Its email.
    pub email: String,
    /// The resource the token was issued for.
    pub resource: String,
    /// The client holding it.
    pub client_id: String,
    /// Whether daily re-activation is on for the account.
    pub daily_reactivation: bool,
    /// The account's last web sign-in (Unix ms).
    pub last_sign_in_at: Option<i64>,
}

/// The account behind a current access token.
pub async fn bearer(store: &Store, keys: &Keys, token: &str, now: i64) -> anyhow::Result<Option<Bearer>> {
    let sql = format!(
        "SELECT t.account_id, a.email, t.resource, t.client_id, {}, a.last_sign_in_at
         FROM oauth_tokens t JOIN accounts a ON a.id = t.account_id
         WHERE t.token_hash = $1 AND t.kind = 'access' AND t.expires_at > $2",
        crate::relay::accounts::REACTIVATION_FLAG
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&keys.web_hash("oauth token", token)[..])
        .bind(now)
        .fetch_optional(store.pool())
        .await?;
    Ok(row.map(|r| Bearer {
        account_id: r.get(0),
        email: r.get(1),
        resource: r.get(2),
        client_id: r.get(3),
        daily_reactivation: r.get::<i64, _>(4) != 0,
        last_sign_in_at: r.get(5),
    }))
}

/// Deletes expired and spent codes and tokens, and registrations no token
/// came of within [`UNUSED_CLIENT`] (or unused for [`REFRESH_LIFETIME`]).
pub async fn sweep(store: &Store, now: i64) -> anyhow::Result<u64> {
    let pool = store.pool();
    let mut gone = 0;
    gone +=
        sqlx::query("DELETE FROM oauth_codes WHERE expires_at <= $1").bind(now).execute(pool).await?.rows_affected();
    gone +=
        sqlx::query("DELETE FROM oauth_tokens WHERE expires_at <= $1").bind(now).execute(pool).await?.rows_affected();
    gone +=
        sqlx::query("DELETE FROM oauth_clients WHERE (last_used_at IS NULL AND created_at < $1) OR last_used_at < $2")
            .bind(now - ms(UNUSED_CLIENT))
            .bind(now - ms(REFRESH_LIFETIME))
            .execute(pool)
            .await?
            .rows_affected();
    Ok(gone)
}
