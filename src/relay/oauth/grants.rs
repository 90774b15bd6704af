//! OAuth state in the store: registered clients, what each account granted
//! which client, one-use authorization codes, and access and refresh tokens.
//! Codes and tokens are stored only as keyed hashes; each is bound to its
//! client, its account and its resource, and is issued only while its grant
//! stands, so revoking a grant (or a token, RFC 7009) ends its tokens at once.

use std::time::Duration;

use sqlx::Row;

use crate::relay::keys::{Digest, Keys};
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

/// A token chain a refresh continues: its id, and the refresh token just
/// spent, which must still stand (not revoked) when the next pair is issued.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The chain's id: every token of one authorization shares it.
    family: String,
    /// The keyed hash of the refresh token spent to continue it.
    spent: Digest,
}

/// Issues a fresh pair for a grant's client, account and resource, in the
/// token `chain` (a new one for `None`: an authorization code), and notes
/// the client and the grant as used. `None` when the account has no grant
/// for the client, or the chain's spent refresh token is gone (either was
/// revoked, also while this refresh was under way): nothing is issued.
pub async fn issue_tokens(
    store: &Store,
    keys: &Keys,
    grant: &Grant,
    chain: Option<&Chain>,
    now: i64,
) -> anyhow::Result<Option<Tokens>> {
    let tokens = Tokens {
        access: format!("{ACCESS_PREFIX}{}", new_secret()),
        refresh: format!("{REFRESH_PREFIX}{}", new_secret()),
    };
    let family = chain.map_or_else(|| new_secret()[..16].to_owned(), |c| c.family.clone());
    let mut tx = store.pool().begin().await?;
    // Written first, so that the rows a revocation deletes are held until
    // this commits: a revocation then waits, and its next statement sees
    // (and deletes) this pair; one that came first leaves nothing to hold.
    if !hold(&mut tx, grant, chain, now).await? {
        return Ok(None);
    }
    for (kind, token, lifetime) in
        [("access", &tokens.access, ACCESS_LIFETIME), ("refresh", &tokens.refresh, REFRESH_LIFETIME)]
    {
        let added = sqlx::query(
            "INSERT INTO oauth_tokens (token_hash, kind, client_id, account_id, resource, expires_at, family)
             SELECT $1, $2, $3, $4, $5, $6, $7
             WHERE EXISTS (SELECT 1 FROM oauth_grants WHERE account_id = $4 AND client_id = $3)",
        )
        .bind(&keys.web_hash("oauth token", token)[..])
        .bind(kind)
        .bind(&grant.client_id)
        .bind(grant.account_id)
        .bind(&grant.resource)
        .bind(now + ms(lifetime))
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        if added.rows_affected() != 1 {
            return Ok(None);
        }
    }
    sqlx::query("UPDATE oauth_clients SET last_used_at = $1 WHERE client_id = $2")
        .bind(now)
        .bind(&grant.client_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(tokens))
}

/// Notes the grant as used and checks that it, and the refresh token
/// `chain` spent, still stand; both rows stay locked until `tx` ends.
async fn hold(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    grant: &Grant,
    chain: Option<&Chain>,
    now: i64,
) -> anyhow::Result<bool> {
    let granted = sqlx::query("UPDATE oauth_grants SET last_used_at = $1 WHERE account_id = $2 AND client_id = $3")
        .bind(now)
        .bind(grant.account_id)
        .bind(&grant.client_id)
        .execute(&mut **tx)
        .await?;
    if granted.rows_affected() != 1 {
        return Ok(false);
    }
    let Some(chain) = chain else { return Ok(true) };
    let spent = sqlx::query("UPDATE oauth_tokens SET used_at = used_at WHERE token_hash = $1 AND family = $2")
        .bind(&chain.spent[..])
        .bind(&chain.family)
        .execute(&mut **tx)
        .await?;
    Ok(spent.rows_affected() == 1)
}

/// A spent refresh token presented again this long after its first use
/// ends its whole chain (RFC 9700 4.14.2: one of the two presenting it stole
/// it). Sooner, it is only refused: a client whose instances share one
/// token store may refresh twice at once.
pub const REUSE_GRACE: Duration = Duration::from_secs(10);

/// Spends a refresh token of `client_id` (once: a second use finds nothing)
/// and returns what it was bound to, with its token chain. A token spent
/// before (more than [`REUSE_GRACE`] ago) ends its chain: every access and
/// refresh token it and its successors bought.
pub async fn take_refresh(
    store: &Store,
    keys: &Keys,
    token: &str,
    client_id: &str,
    now: i64,
) -> anyhow::Result<Option<(Grant, Chain)>> {
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
        reused(store, &hash, now).await?;
        return Ok(None);
    }
    let row = sqlx::query("SELECT account_id, resource, family FROM oauth_tokens WHERE token_hash = $1")
        .bind(&hash[..])
        .fetch_one(store.pool())
        .await?;
    let grant = Grant {
        client_id: client_id.to_owned(),
        account_id: row.get(0),
        redirect_uri: String::new(),
        code_challenge: String::new(),
        resource: row.get(1),
    };
    Ok(Some((grant, Chain { family: row.get(2), spent: hash })))
}

/// Ends the chain of the refresh token `hash` when it was spent before
/// [`REUSE_GRACE`]; whether it did.
async fn reused(store: &Store, hash: &Digest, now: i64) -> anyhow::Result<bool> {
    let row = sqlx::query(
        "SELECT account_id, client_id, family FROM oauth_tokens
         WHERE token_hash = $1 AND kind = 'refresh' AND used_at IS NOT NULL AND used_at < $2",
    )
    .bind(&hash[..])
    .bind(now - ms(REUSE_GRACE))
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(false) };
    let (account_id, client_id, family): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
    end_chain(store, account_id, &client_id, &family).await?;
    tracing::warn!(client = %client_id, "a spent OAuth refresh token was presented again; its token chain is ended");
    Ok(true)
}

/// Deletes every token of one chain of `account_id`'s grant of `client_id`.
async fn end_chain(store: &Store, account_id: i64, client_id: &str, family: &str) -> anyhow::Result<u64> {
    let ended = sqlx::query("DELETE FROM oauth_tokens WHERE account_id = $1 AND client_id = $2 AND family = $3")
        .bind(account_id)
        .bind(client_id)
        .bind(family)
        .execute(store.pool())
        .await?;
    Ok(ended.rows_affected())
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

/// Records that `account_id` allowed `client_id` (named `name`) now. A grant
/// that still holds a live token keeps when it was first authorised; one
/// that holds none (every token expired or revoked) starts over.
pub async fn authorize(store: &Store, account_id: i64, client_id: &str, name: &str, now: i64) -> anyhow::Result<()> {
    let name: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
    sqlx::query(
        "INSERT INTO oauth_grants (account_id, client_id, client_name, authorized_at, last_used_at)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (account_id, client_id) DO UPDATE SET client_name = $3, authorized_at = CASE
           WHEN EXISTS (SELECT 1 FROM oauth_tokens t WHERE t.account_id = $1 AND t.client_id = $2
                        AND t.used_at IS NULL AND t.expires_at > $4)
           THEN oauth_grants.authorized_at ELSE $4 END",
    )
    .bind(account_id)
    .bind(client_id)
    .bind(&name)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// A client that holds a live token for an account, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The client's id (a DCR id, or its metadata document's URL): what a revocation names.
    pub client_id: String,
    /// Its name as the account consented to it: the client's own text.
    pub name: String,
    /// When the account first authorised it (Unix ms).
    pub authorized_at: i64,
    /// When it last got tokens or acted with one (Unix ms).
    pub last_used_at: i64,
}

/// The clients holding a live (unexpired, unspent) token for `account_id`, first authorised first.
pub async fn connected(store: &Store, account_id: i64, now: i64) -> anyhow::Result<Vec<Connected>> {
    let rows = sqlx::query(
        "SELECT g.client_id, g.client_name, g.authorized_at, g.last_used_at FROM oauth_grants g
         WHERE g.account_id = $1 AND EXISTS (SELECT 1 FROM oauth_tokens t WHERE t.account_id = g.account_id
               AND t.client_id = g.client_id AND t.used_at IS NULL AND t.expires_at > $2)
         ORDER BY g.authorized_at, g.client_id",
    )
    .bind(account_id)
    .bind(now)
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| Connected { client_id: r.get(0), name: r.get(1), authorized_at: r.get(2), last_used_at: r.get(3) })
        .collect())
}

/// Ends what `account_id` granted `client_id`: the grant, every access and
/// refresh token, and codes not yet exchanged, at once; other accounts'
/// grants of the client stay. Whether there was anything to end.
pub async fn revoke_grant(store: &Store, account_id: i64, client_id: &str) -> anyhow::Result<bool> {
    let mut tx = store.pool().begin().await?;
    let mut ended = 0;
    for sql in [
        "DELETE FROM oauth_grants WHERE account_id = $1 AND client_id = $2",
        "DELETE FROM oauth_tokens WHERE account_id = $1 AND client_id = $2",
        "DELETE FROM oauth_codes WHERE account_id = $1 AND client_id = $2",
    ] {
        ended += sqlx::query(sql).bind(account_id).bind(client_id).execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(ended > 0)
}

/// What an RFC 7009 revocation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The token (and, for a refresh token, its chain) is ended.
    Revoked,
    /// No such token (never issued, expired, or already revoked): nothing to do.
    Unknown,
    /// The token is another client's: it is left alone.
    OtherClient,
}

/// RFC 7009 for `client_id`: ends an access token, or a refresh token with
/// every token of its chain (the access tokens it and its forerunners bought).
pub async fn revoke_token(store: &Store, keys: &Keys, token: &str, client_id: &str) -> anyhow::Result<Revocation> {
    let hash = keys.web_hash("oauth token", token);
    let row = sqlx::query("SELECT kind, client_id, account_id, family FROM oauth_tokens WHERE token_hash = $1")
        .bind(&hash[..])
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else { return Ok(Revocation::Unknown) };
    let (kind, owner, account_id, family): (String, String, i64, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if owner != client_id {
        return Ok(Revocation::OtherClient);
    }
    // The token itself first: a refresh it is paying for holds it until
    // its pair is written, which the chain's deletion then sees.
    let deleted = sqlx::query("DELETE FROM oauth_tokens WHERE token_hash = $1").bind(&hash[..]);
    let mut ended = deleted.execute(store.pool()).await?.rows_affected();
    if kind == "refresh" {
        ended += end_chain(store, account_id, client_id, &family).await?;
    }
    Ok(if ended > 0 { Revocation::Revoked } else { Revocation::Unknown })
}

/// Deletes expired and spent codes and tokens, registrations no token came
/// of within [`UNUSED_CLIENT`] (or unused for [`REFRESH_LIFETIME`]), and
/// grants left with no token and no code to exchange.
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
    gone += sqlx::query(
        "DELETE FROM oauth_grants WHERE last_used_at < $1
         AND NOT EXISTS (SELECT 1 FROM oauth_tokens t WHERE t.account_id = oauth_grants.account_id
                         AND t.client_id = oauth_grants.client_id AND t.used_at IS NULL)
         AND NOT EXISTS (SELECT 1 FROM oauth_codes c WHERE c.account_id = oauth_grants.account_id
                         AND c.client_id = oauth_grants.client_id AND c.used_at IS NULL)",
    )
    .bind(now - ms(CODE_LIFETIME))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(gone)
}
