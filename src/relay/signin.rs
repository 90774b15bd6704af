//! Web sign-in in the store: magic links (one use, bound to the browser that
//! asked, or redeemed there with a short code another device was shown) and
//! the web sessions they open. Only keyed hashes of links, codes, browser
//! cookies and sessions are stored.

use std::time::Duration;

use sqlx::Row;

use super::keys::{self, Keys};
use super::store::Store;

/// How long a magic link works.
pub const LINK_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How long a web session lasts; signing in again opens a new one.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Wrong short codes a link survives; the next wrong one ends it.
pub const CODE_TRIES: i64 = 5;

/// Digits of the short code another device is shown.
const CODE_DIGITS: usize = 6;

/// Why a magic link did not sign anybody in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Unknown, already used, or past its 15 minutes (the same answer for all three).
    #[error("this sign-in link has expired or was already used")]
    Expired,
    /// The short code was wrong (tries remain, or the link is now dead).
    #[error("that code is not the one the other device shows")]
    WrongCode,
}

/// What redeeming a link in a browser came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The browser that asked: signed in as this email, going on to `next`.
    SignedIn {
        /// The verified address.
        email: String,
        /// The page to go on to (a path on this relay).
        next: String,
    },
    /// Another device: it shows this code, to be typed in the browser that asked.
    ShowCode(String),
}

/// A new secret: 32 random bytes as 64 hex digits.
pub fn new_secret() -> String {
    keys::new_token()
}

fn new_code() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    let n = u64::from_le_bytes(bytes) % 10u64.pow(CODE_DIGITS as u32);
    format!("{n:0width$}", width = CODE_DIGITS)
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Stores a new link for `email`, bound to the browser whose cookie is
/// `browser` (none: whoever opens it signs in, for links the operator prints).
/// Returns the link's secret.
pub async fn create_link(
    store: &Store,
    keys: &Keys,
    email: &str,
    browser: Option<&str>,
    next: &str,
    now: i64,
) -> anyhow::Result<String> {
    let token = new_secret();
    sqlx::query(
        "INSERT INTO magic_links (token_hash, email, browser_hash, next_path, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&keys.web_hash("link", &token)[..])
    .bind(email)
    .bind(browser.map(|b| keys.web_hash("browser", b).to_vec()))
    .bind(next)
    .bind(now)
    .bind(now + ms(LINK_LIFETIME))
    .execute(store.pool())
    .await?;
    Ok(token)
}

/// Links asked for `email` since `since` (for the per-address limits).
pub async fn links_since(store: &Store, email: &str, since: i64) -> anyhow::Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) FROM magic_links WHERE email = $1 AND created_at >= $2")
        .bind(email)
        .bind(since)
        .fetch_one(store.pool())
        .await?;
    Ok(row.get(0))
}

/// Whether a link can still be redeemed (its GET page shows the button, or says what to do).
pub async fn link_usable(store: &Store, keys: &Keys, token: &str, now: i64) -> anyhow::Result<bool> {
    let row = sqlx::query(
        "SELECT 1 FROM magic_links WHERE token_hash = $1 AND used_at IS NULL AND code_hash IS NULL AND expires_at > $2",
    )
    .bind(&keys.web_hash("link", token)[..])
    .bind(now)
    .fetch_optional(store.pool())
    .await?;
    Ok(row.is_some())
}

/// Redeems a link opened in the browser whose cookie is `browser`. The link's
/// own browser (or any, for an unbound link) is signed in by one atomic
/// update that only one request can win; another device gets a short code
/// instead, and the link then works only through that code.
pub async fn redeem_link(
    store: &Store,
    keys: &Keys,
    token: &str,
    browser: Option<&str>,
    now: i64,
) -> anyhow::Result<Result<Redeemed, LinkError>> {
    let token_hash = keys.web_hash("link", token);
    let row = sqlx::query("SELECT email, browser_hash, next_path FROM magic_links WHERE token_hash = $1")
        .bind(&token_hash[..])
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else { return Ok(Err(LinkError::Expired)) };
    let bound: Option<Vec<u8>> = row.get(1);
    let same_browser = match (&bound, browser) {
        (None, _) => true,
        (Some(stored), Some(cookie)) => keys::digest_eq(&keys.web_hash("browser", cookie), stored),
        (Some(_), None) => false,
    };
    if same_browser {
        let won = sqlx::query(
            "UPDATE magic_links SET used_at = $1
             WHERE token_hash = $2 AND used_at IS NULL AND code_hash IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(&token_hash[..])
        .execute(store.pool())
        .await?;
        if won.rows_affected() != 1 {
            return Ok(Err(LinkError::Expired));
        }
        return Ok(Ok(Redeemed::SignedIn { email: row.get(0), next: row.get(2) }));
    }
    let code = new_code();
    let shown = sqlx::query(
        "UPDATE magic_links SET code_hash = $1
         WHERE token_hash = $2 AND used_at IS NULL AND code_hash IS NULL AND expires_at > $3",
    )
    .bind(&keys.web_hash("code", &code)[..])
    .bind(&token_hash[..])
    .bind(now)
    .execute(store.pool())
    .await?;
    if shown.rows_affected() != 1 {
        return Ok(Err(LinkError::Expired));
    }
    Ok(Ok(Redeemed::ShowCode(code)))
}

/// Redeems, in the browser that asked (by its cookie), the short code another
/// device was shown. Each wrong code uses up a try; after [`CODE_TRIES`] the
/// link is dead. Returns the email and the page to go on to.
pub async fn redeem_code(
    store: &Store,
    keys: &Keys,
    browser: &str,
    code: &str,
    now: i64,
) -> anyhow::Result<Result<(String, String), LinkError>> {
    let browser_hash = keys.web_hash("browser", browser);
    let row = sqlx::query(
        "SELECT token_hash, code_hash, email, next_path FROM magic_links
         WHERE browser_hash = $1 AND used_at IS NULL AND code_hash IS NOT NULL AND expires_at > $2
         AND code_tries < $3 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(&browser_hash[..])
    .bind(now)
    .bind(CODE_TRIES)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(Err(LinkError::Expired)) };
    let token_hash: Vec<u8> = row.get(0);
    let code_hash: Vec<u8> = row.get(1);
    let typed: String = code.chars().filter(char::is_ascii_digit).collect();
    if !keys::digest_eq(&keys.web_hash("code", &typed), &code_hash) {
        sqlx::query("UPDATE magic_links SET code_tries = code_tries + 1 WHERE token_hash = $1")
            .bind(&token_hash)
            .execute(store.pool())
            .await?;
        return Ok(Err(LinkError::WrongCode));
    }
    let won = sqlx::query(
        "UPDATE magic_links SET used_at = $1
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 AND code_tries < $3",
    )
    .bind(now)
    .bind(&token_hash)
    .bind(CODE_TRIES)
    .execute(store.pool())
    .await?;
    if won.rows_affected() != 1 {
        return Ok(Err(LinkError::Expired));
    }
    Ok(Ok((row.get(2), row.get(3))))
}

/// The account for a verified email, made now if it is new (daily
/// re-activation on, as for every account that signs up on the web), with
/// its last sign-in set to `now`. Returns its id.
pub async fn sign_in_account(store: &Store, email: &str, now: i64) -> anyhow::Result<i64> {
    sqlx::query(
        "INSERT INTO accounts (email, created_at, daily_reactivation) VALUES ($1, $2, TRUE)
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(email)
    .bind(now)
    .execute(store.pool())
    .await?;
    let query =
        sqlx::query("UPDATE accounts SET last_sign_in_at = $1 WHERE email = $2 RETURNING id").bind(now).bind(email);
    Ok(super::store::returning(query, store.pool()).await?.get(0))
}

/// Opens a web session for an account; returns its cookie value. `replaces`
/// (the cookie the browser had, if any) is ended, so a session id never
/// survives a sign-in.
pub async fn open_session(
    store: &Store,
    keys: &Keys,
    account_id: i64,
    replaces: Option<&str>,
    now: i64,
) -> anyhow::Result<String> {
    if let Some(old) = replaces {
        close_session(store, keys, old).await?;
    }
    let token = new_secret();
    sqlx::query("INSERT INTO web_sessions (token_hash, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(&keys.web_hash("session", &token)[..])
        .bind(account_id)
        .bind(now)
        .bind(now + ms(SESSION_LIFETIME))
        .execute(store.pool())
        .await?;
    Ok(token)
}

/// The account a session cookie belongs to, if the session is current.
pub async fn session_account(store: &Store, keys: &Keys, token: &str, now: i64) -> anyhow::Result<Option<i64>> {
    let row = sqlx::query("SELECT account_id FROM web_sessions WHERE token_hash = $1 AND expires_at > $2")
        .bind(&keys.web_hash("session", token)[..])
        .bind(now)
        .fetch_optional(store.pool())
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Ends a session (signing out).
pub async fn close_session(store: &Store, keys: &Keys, token: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1")
        .bind(&keys.web_hash("session", token)[..])
        .execute(store.pool())
        .await?;
    Ok(())
}

/// How long a revoked API key is kept (listed as revoked) before it is deleted.
pub const REVOKED_KEY_KEPT: Duration = Duration::from_secs(30 * 86_400);

/// Deletes expired sessions, links past a day old (kept that long for the
/// per-address daily limit) and keys revoked long ago. Returns how many rows went.
pub async fn sweep(store: &Store, now: i64) -> anyhow::Result<u64> {
    let sessions =
        sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1").bind(now).execute(store.pool()).await?;
    let links = sqlx::query("DELETE FROM magic_links WHERE created_at < $1")
        .bind(now - 86_400_000)
        .execute(store.pool())
        .await?;
    let keys = sqlx::query("DELETE FROM api_keys WHERE revoked_at < $1")
        .bind(now - ms(REVOKED_KEY_KEPT))
        .execute(store.pool())
        .await?;
    Ok(sessions.rows_affected() + links.rows_affected() + keys.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn setup() -> (tempfile::TempDir, Store, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let keys = Keys::parse(&"ab".repeat(32)).unwrap();
        (dir, store, keys)
    }

    #[tokio::test]
    async fn a_link_signs_its_own_browser_in_once() {
        let (_dir, store, keys) = setup().await;
        let token = create_link(&store, &keys, "a@b.co", Some("cookie"), "/dashboard", 1_000).await.unwrap();
        assert!(link_usable(&store, &keys, &token, 2_000).await.unwrap());
        let first = redeem_link(&store, &keys, &token, Some("cookie"), 2_000).await.unwrap();
        assert_eq!(first, Ok(Redeemed::SignedIn { email: "a@b.co".into(), next: "/dashboard".into() }));
        let again = redeem_link(&store, &keys, &token, Some("cookie"), 2_001).await.unwrap();
        assert_eq!(again, Err(LinkError::Expired));
        assert!(!link_usable(&store, &keys, &token, 2_001).await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_link_signs_nobody_in() {
        let (_dir, store, keys) = setup().await;
        let token = create_link(&store, &keys, "a@b.co", Some("cookie"), "/dashboard", 1_000).await.unwrap();
        let late = 1_000 + ms(LINK_LIFETIME);
        assert_eq!(redeem_link(&store, &keys, &token, Some("cookie"), late).await.unwrap(), Err(LinkError::Expired));
    }

    #[tokio::test]
    async fn another_device_gets_a_code_with_five_tries() {
        let (_dir, store, keys) = setup().await;
        let token = create_link(&store, &keys, "a@b.co", Some("cookie"), "/dashboard", 1_000).await.unwrap();
        let Ok(Redeemed::ShowCode(code)) = redeem_link(&store, &keys, &token, None, 2_000).await.unwrap() else {
            panic!("another device must be shown a code")
        };
        assert_eq!(code.len(), 6);
        // The link itself is spent: a second device gets nothing.
        assert_eq!(redeem_link(&store, &keys, &token, Some("other"), 2_000).await.unwrap(), Err(LinkError::Expired));
        let wrong = if code == "000000" { "111111" } else { "000000" };
        assert_eq!(redeem_code(&store, &keys, "other", &code, 2_000).await.unwrap(), Err(LinkError::Expired));
        assert_eq!(redeem_code(&store, &keys, "cookie", wrong, 2_000).await.unwrap(), Err(LinkError::WrongCode));
        let signed = redeem_code(&store, &keys, "cookie", &code, 2_000).await.unwrap();
        assert_eq!(signed, Ok(("a@b.co".into(), "/dashboard".into())));
        assert_eq!(redeem_code(&store, &keys, "cookie", &code, 2_000).await.unwrap(), Err(LinkError::Expired));

        let token = create_link(&store, &keys, "a@b.co", Some("cookie"), "/dashboard", 3_000).await.unwrap();
        let Ok(Redeemed::ShowCode(code)) = redeem_link(&store, &keys, &token, None, 3_000).await.unwrap() else {
            panic!("another device must be shown a code")
        };
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..CODE_TRIES {
            assert_eq!(redeem_code(&store, &keys, "cookie", wrong, 3_000).await.unwrap(), Err(LinkError::WrongCode));
        }
        assert_eq!(redeem_code(&store, &keys, "cookie", &code, 3_000).await.unwrap(), Err(LinkError::Expired));
    }

    #[tokio::test]
    async fn sessions_expire_and_close() {
        let (_dir, store, keys) = setup().await;
        let account = sign_in_account(&store, "a@b.co", 1_000).await.unwrap();
        assert_eq!(sign_in_account(&store, "a@b.co", 2_000).await.unwrap(), account);
        let session = open_session(&store, &keys, account, None, 1_000).await.unwrap();
        assert_eq!(session_account(&store, &keys, &session, 2_000).await.unwrap(), Some(account));
        let late = 1_000 + ms(SESSION_LIFETIME);
        assert_eq!(session_account(&store, &keys, &session, late).await.unwrap(), None);
        let rotated = open_session(&store, &keys, account, Some(&session), 2_000).await.unwrap();
        assert_eq!(session_account(&store, &keys, &session, 2_000).await.unwrap(), None);
        assert_eq!(session_account(&store, &keys, &rotated, 2_000).await.unwrap(), Some(account));
        close_session(&store, &keys, &rotated).await.unwrap();
        assert_eq!(session_account(&store, &keys, &rotated, 2_000).await.unwrap(), None);
    }
}
