//! The relay's persistent store: agents (by code hash), accounts, keys and
//! links, in SQLite (one relay, the default) or PostgreSQL (several relays,
//! `--database-url postgres://…`), through sqlx's `Any` driver.
//!
//! Only keyed hashes of codes and tokens are stored, never the values.
//!
//! # Writing a query that runs on both
//! - Run it on [`Store::pool`] (an [`AnyPool`]); read rows as [`AnyRow`] with
//!   `Row::get`. Never take `SqliteRow` or `PgRow`: there is one query text for both.
//! - Placeholders are `$1`, `$2`, … (both engines take them; a number may repeat).
//! - Column types: `BIGINT` for numbers and times (Unix ms), `TEXT`, `BLOB` for
//!   bytes, and `INTEGER PRIMARY KEY` for a row id (migrations turn `BLOB` into
//!   `BYTEA` and the row id into an identity column on PostgreSQL). Read numbers as
//!   `i64`, bytes as `Vec<u8>`, nullable ones as `Option<_>`.
//! - No `BOOLEAN` column in a row you read (SQLite's cannot pass the `Any`
//!   driver): store a flag as `BIGINT` 0/1.
//! - `RETURNING id`, `ON CONFLICT (…) DO NOTHING/UPDATE`, `LOWER`, `COUNT(*)`,
//!   `EXISTS` and `COALESCE` are portable; SQLite-only (`INSERT OR IGNORE`,
//!   `datetime()`) and PostgreSQL-only (`ILIKE`, `::casts`, `NOW()`) forms are not.
//! - A write with `RETURNING` goes through [`returning`], never `fetch_one`:
//!   on SQLite, `fetch_one` stops at the first row, before the statement
//!   finishes and commits, so a failed commit (a full disk) goes unseen and
//!   the row may never be saved (sqlx issues #2099, #3430).
//! - A new table or column is a new entry at the end of `MIGRATIONS`, never an edit of one.
//! - Test it on both: `tests/store.rs` runs the store against a real PostgreSQL.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, Row};

pub use sqlx::AnyPool;
pub use sqlx::any::AnyRow;

use super::keys::Digest;
use crate::protocol::agent::AgentInfo;

/// Name of the database file inside the data dir.
pub const DB_FILE: &str = "relay.db";

/// Schema changes, applied in order, each once. Written in SQLite's words;
/// [`Backend::ddl`] turns them into PostgreSQL's.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE agents (
            id INTEGER PRIMARY KEY,
            code_hash BLOB NOT NULL UNIQUE,
            token_hash BLOB NOT NULL,
            prev_token_hash BLOB,
            code_created_ms BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            last_seen_ms BIGINT NOT NULL,
            agent_info TEXT NOT NULL
        )",
    ),
    (
        2,
        "CREATE TABLE accounts (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            last_sign_in_at BIGINT,
            daily_reactivation BOOLEAN NOT NULL DEFAULT TRUE
        )",
    ),
    (
        3,
        "CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            secret_hash BLOB NOT NULL,
            created_at BIGINT NOT NULL,
            last_used_at BIGINT,
            revoked_at BIGINT
        )",
    ),
    (
        4,
        "CREATE TABLE links (
            id INTEGER PRIMARY KEY,
            agent_id BIGINT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            alias TEXT NOT NULL,
            state TEXT NOT NULL,
            linked_at BIGINT NOT NULL,
            last_used_at BIGINT,
            UNIQUE (agent_id, account_id),
            UNIQUE (account_id, alias)
        )",
    ),
    // When an agent first came back with its code and token; NULL for one
    // that only ever registered, which is forgotten after a few hours.
    (5, "ALTER TABLE agents ADD COLUMN returned_ms BIGINT"),
    // Web sign-in (versions from 101, so that other branches' next numbers
    // do not collide). A magic link: stored by its hash, bound to the browser
    // that asked by the hash of that browser's cookie (NULL for a link the
    // operator printed), with the hash of the short code another device is
    // shown, and the page to go on to.
    (
        101,
        "CREATE TABLE magic_links (
            token_hash BLOB PRIMARY KEY,
            email TEXT NOT NULL,
            browser_hash BLOB,
            code_hash BLOB,
            code_tries BIGINT NOT NULL DEFAULT 0,
            next_path TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT
        )",
    ),
    (
        102,
        "CREATE TABLE web_sessions (
            token_hash BLOB PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        )",
    ),
    (103, "CREATE INDEX magic_links_email ON magic_links (email, created_at)"),
    // OAuth 2.1: clients registered by DCR (CIMD clients are fetched, not
    // stored), one-use authorization codes, and access and refresh tokens,
    // each bound to its client, account and resource.
    (
        104,
        "CREATE TABLE oauth_clients (
            client_id TEXT PRIMARY KEY,
            client_name TEXT NOT NULL,
            redirect_uris TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            last_used_at BIGINT
        )",
    ),
    (
        105,
        "CREATE TABLE oauth_codes (
            code_hash BLOB PRIMARY KEY,
            client_id TEXT NOT NULL,
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            redirect_uri TEXT NOT NULL,
            code_challenge TEXT NOT NULL,
            resource TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT
        )",
    ),
    (
        106,
        "CREATE TABLE oauth_tokens (
            token_hash BLOB PRIMARY KEY,
            kind TEXT NOT NULL,
            client_id TEXT NOT NULL,
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            resource TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT
        )",
    ),
    // What an account granted an OAuth client (versions from 201, apart from
    // other branches' next numbers): the client's name as consented to, when it
    // was first authorised and last used, for the dashboard's "Connected apps";
    // tokens are issued only while it exists, so deleting it (with the tokens)
    // revokes the client at once.
    (
        201,
        "CREATE TABLE oauth_grants (
            account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
            client_id TEXT NOT NULL,
            client_name TEXT NOT NULL,
            authorized_at BIGINT NOT NULL,
            last_used_at BIGINT NOT NULL,
            PRIMARY KEY (account_id, client_id)
        )",
    ),
    // The chain of tokens one authorization code started, carried through each
    // refresh, so revoking a refresh token (RFC 7009) ends that chain's access
    // tokens and not another device's sign-in of the same client.
    (202, "ALTER TABLE oauth_tokens ADD COLUMN family TEXT NOT NULL DEFAULT ''"),
];

/// Runs a write with `RETURNING` to its end and gives its one row. Run to
/// the end, a statement has committed (or said why not, e.g. a full disk)
/// by the time this returns; `fetch_one` would return before that on SQLite.
pub async fn returning<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    pool: &AnyPool,
) -> anyhow::Result<AnyRow> {
    query.fetch_all(pool).await?.into_iter().next().context("the write returned no row")
}

/// Which database engine a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A file in the data dir: one relay.
    Sqlite,
    /// A server several relays share.
    Postgres,
}

impl Backend {
    /// A migration's DDL in this engine's words: row ids become identity
    /// columns and `BLOB` becomes `BYTEA` on PostgreSQL.
    pub fn ddl(self, sql: &str) -> String {
        match self {
            Self::Sqlite => sql.to_owned(),
            Self::Postgres => sql
                .replace("INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
                .replace("BLOB", "BYTEA"),
        }
    }
}

/// How long a request waits for a database connection before it fails
/// (a PostgreSQL that is down or restarting fails requests, not hangs them).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections a relay holds to PostgreSQL at most.
const PG_CONNECTIONS: u32 = 16;

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Connections to whichever engine; every query runs on it.
    pool: AnyPool,
    /// The engine, for the few things (DDL, locking) that differ.
    backend: Backend,
    /// The fault last logged and when, so a full disk is one line in the
    /// log, not one per request; `None` while writes work.
    fault_logged: Arc<Mutex<Option<(StorageFault, Instant)>>>,
}

/// How often a storage fault that lasts is logged again.
const FAULT_LOG_EVERY: Duration = Duration::from_secs(600);

/// One registered agent as stored.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    /// Row id; stable across code resets.
    pub id: i64,
    /// Keyed hash of the current agent token.
    pub token_hash: Vec<u8>,
    /// Keyed hash of the token before the last rotation, still accepted until the new one is used.
    pub prev_token_hash: Option<Vec<u8>>,
    /// When the current code was made (Unix ms); the anonymous window counts from it.
    pub code_created_ms: i64,
    /// What the daemon last said about its machine.
    pub agent_info: AgentInfo,
}

/// Why the relay's database refuses writes, when that is what went wrong:
/// the relay then says so, and keeps serving what needs no write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The disk (or file system) holding the data directory is full.
    Full,
    /// The data directory or its file system is read-only.
    ReadOnly,
}

impl StorageFault {
    /// The fault behind `e`, if it is one: the database's "full" or
    /// "read-only" error, or the file system's ENOSPC, EDQUOT or EROFS.
    pub fn of(e: &anyhow::Error) -> Option<Self> {
        e.chain().find_map(|cause| {
            if let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>() {
                let code = db.code().unwrap_or_default();
                // SQLite's primary result code (the low byte of its extended
                // one), or PostgreSQL's SQLSTATE.
                let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
                return match code.parse::<i32>().map(|c| c & 0xff) {
                    Ok(13) if sqlite => Some(Self::Full),
                    Ok(8) if sqlite => Some(Self::ReadOnly),
                    _ if code == "53100" => Some(Self::Full),
                    _ if code == "25006" => Some(Self::ReadOnly),
                    _ => None,
                };
            }
            match cause.downcast_ref::<std::io::Error>()?.raw_os_error()? {
                libc::ENOSPC | libc::EDQUOT => Some(Self::Full),
                libc::EROFS => Some(Self::ReadOnly),
                _ => None,
            }
        })
    }

    /// What is wrong, in words for callers and the log.
    pub fn says(self) -> &'static str {
        match self {
            Self::Full => "the disk holding its data directory is full",
            Self::ReadOnly => "its data directory is read-only",
        }
    }
}

fn agent_record(r: &AnyRow) -> AgentRecord {
    AgentRecord {
        id: r.get(0),
        token_hash: r.get(1),
        prev_token_hash: r.get(2),
        code_created_ms: r.get(3),
        agent_info: serde_json::from_str(r.get(4)).unwrap_or_default(),
    }
}

/// Creates the database file 0600 before SQLite does (SQLite would use the
/// umask, often 0644, and gives its WAL and shared-memory files the database
/// file's mode), and narrows the mode of files left from before.
fn make_private(db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .with_context(|| format!("creating the relay database {}", db.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(meta) = std::fs::metadata(&file) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("{} is readable by other users and could not be made 0600", file.display()))?;
            tracing::warn!("{} was readable by other users (mode {mode:03o}); made it 0600", file.display());
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `dir` and brings its schema up to date.
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let path = dir.join(DB_FILE);
        make_private(&path)?;
        let url = SqliteConnectOptions::new().filename(&path).create_if_missing(true).to_url_lossy();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    Ok(())
                })
            })
            .connect_with(AnyConnectOptions::from_url(&url)?)
            .await
            .with_context(|| format!("opening the relay database {}", path.display()))?;
        let store = Self { pool, backend: Backend::Sqlite, fault_logged: Arc::default() };
        store.migrate().await.context("updating the relay database schema")?;
        Ok(store)
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host/db`)
    /// and brings its schema up to date; several relays may share it.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.parse().context("--database-url is not a URL")?;
        let shown = redacted(&options);
        if !matches!(options.database_url.scheme(), "postgres" | "postgresql") {
            anyhow::bail!(
                "--database-url {shown}: only postgres:// URLs are supported (SQLite is the default without it)"
            );
        }
        let pool = AnyPoolOptions::new()
            .max_connections(PG_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to the database {shown}; is PostgreSQL running there?"))?;
        let store = Self { pool, backend: Backend::Postgres, fault_logged: Arc::default() };
        // Relays starting together may race to create the bookkeeping table: the loser tries again.
        if store.migrate().await.is_err() {
            store.migrate().await.with_context(|| format!("updating the schema of {shown}"))?;
        }
        Ok(store)
    }

    /// Whether the PostgreSQL at `url` answers (for `doctor`; changes nothing
    /// there): the URL without its password, or why not.
    pub async fn ping(url: &str) -> anyhow::Result<String> {
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.parse().context("--database-url is not a URL")?;
        let shown = redacted(&options);
        let mut conn = tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::AnyConnection::connect_with(&options))
            .await
            .map_err(|_| anyhow::anyhow!("{shown} did not answer within {ACQUIRE_TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {shown}"))?;
        sqlx::query("SELECT 1").execute(&mut conn).await.with_context(|| format!("querying {shown}"))?;
        Ok(shown)
    }

    /// The storage fault behind `e` (a write that failed), if it is one. The
    /// first one is logged, with what to do, and again every
    /// 10 minutes while it lasts; `what` names what failed.
    pub fn fault(&self, what: &str, e: &anyhow::Error) -> Option<StorageFault> {
        let fault = StorageFault::of(e)?;
        let mut logged = self.fault_logged.lock().unwrap();
        if logged.is_none_or(|(was, at)| was != fault || at.elapsed() >= FAULT_LOG_EVERY) {
            *logged = Some((fault, Instant::now()));
            tracing::error!(
                "the relay cannot write its database: {} ({what}: {e:#}). Until it can, new machines and new \
                 account links are refused (503) and last-used times wait in memory; free space on it (or remount \
                 it read-write): no restart is needed",
                fault.says()
            );
        }
        Some(fault)
    }

    /// A write succeeded: if a storage fault was logged, says it is over.
    pub fn wrote(&self) {
        if self.fault_logged.lock().unwrap().take().is_some() {
            tracing::info!("the relay can write its database again");
        }
    }

    /// Which engine this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS aic_migrations (version BIGINT PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            if self.backend == Backend::Postgres {
                // One relay migrates at a time; the others wait, then find the work done.
                sqlx::query("LOCK TABLE aic_migrations IN EXCLUSIVE MODE").execute(&mut *tx).await?;
            }
            let done = sqlx::query("SELECT version FROM aic_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !done {
                sqlx::query(sqlx::AssertSqlSafe(self.backend.ddl(sql))).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO aic_migrations (version) VALUES ($1)").bind(version).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Records a new agent. Fails if the code hash is taken (the caller mints another).
    pub async fn insert_agent(
        &self,
        code_hash: &Digest,
        token_hash: &Digest,
        now_ms: i64,
        info: &AgentInfo,
    ) -> anyhow::Result<i64> {
        let query = sqlx::query(
            "INSERT INTO agents (code_hash, token_hash, code_created_ms, created_ms, last_seen_ms, agent_info)
             VALUES ($1, $2, $3, $3, $3, $4) RETURNING id",
        )
        .bind(&code_hash[..])
        .bind(&token_hash[..])
        .bind(now_ms)
        .bind(serde_json::to_string(info)?);
        Ok(returning(query, &self.pool).await?.get(0))
    }

    /// Finds an agent by its code's hash.
    pub async fn agent_by_code(&self, code_hash: &Digest) -> anyhow::Result<Option<AgentRecord>> {
        let row = sqlx::query(
            "SELECT id, token_hash, prev_token_hash, code_created_ms, agent_info FROM agents WHERE code_hash = $1",
        )
        .bind(&code_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| agent_record(&r)))
    }

    /// Notes that an agent connected (or left) and what it said about itself.
    pub async fn touch_agent(&self, id: i64, now_ms: i64, info: &AgentInfo) -> anyhow::Result<()> {
        sqlx::query("UPDATE agents SET last_seen_ms = $1, agent_info = $2 WHERE id = $3")
            .bind(now_ms)
            .bind(serde_json::to_string(info)?)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives an agent a new code: the old hash stops matching at once, the
    /// anonymous window starts again, and every link and block is dropped.
    pub async fn reset_code(&self, id: i64, code_hash: &Digest, now_ms: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE agents SET code_hash = $1, code_created_ms = $2 WHERE id = $3")
            .bind(&code_hash[..])
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM links WHERE agent_id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces an agent's token; `previous` stays valid until the new one is used.
    pub async fn rotate_token(&self, id: i64, token_hash: &Digest, previous: &Digest) -> anyhow::Result<()> {
        sqlx::query("UPDATE agents SET token_hash = $1, prev_token_hash = $2 WHERE id = $3")
            .bind(&token_hash[..])
            .bind(&previous[..])
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets agents last seen before `before_ms` that no account is linked
    /// to (registrations that never came back). Returns how many.
    pub async fn forget_stale_agents(&self, before_ms: i64) -> anyhow::Result<u64> {
        let done = sqlx::query(
            "DELETE FROM agents WHERE last_seen_ms < $1 AND NOT EXISTS (SELECT 1 FROM links l WHERE l.agent_id = agents.id)",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Notes that an agent came back with its code and token: it is a
    /// machine, not a registration left behind.
    pub async fn mark_returned(&self, id: i64, now_ms: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE agents SET returned_ms = $1 WHERE id = $2 AND returned_ms IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notes that the agents `ids` (connected right now) are seen at `now_ms`.
    pub async fn mark_seen(&self, ids: &[i64], now_ms: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("UPDATE agents SET last_seen_ms = $1 WHERE id = $2")
                .bind(now_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets agents that registered, never came back with their code,
    /// were last seen before `before_ms` and are linked to no account.
    pub async fn forget_unreturned_agents(&self, before_ms: i64) -> anyhow::Result<u64> {
        let done = sqlx::query(
            "DELETE FROM agents WHERE returned_ms IS NULL AND last_seen_ms < $1 \
             AND NOT EXISTS (SELECT 1 FROM links l WHERE l.agent_id = agents.id)",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The daemon has saved its new token: the one before it stops working.
    pub async fn forget_previous_token(&self, id: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE agents SET prev_token_hash = NULL WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// An agent by row id, with its code's hash.
    pub async fn agent_by_id(&self, id: i64) -> anyhow::Result<Option<(Vec<u8>, AgentRecord)>> {
        let row = sqlx::query(
            "SELECT id, token_hash, prev_token_hash, code_created_ms, agent_info, code_hash FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(5), agent_record(&r))))
    }

    /// The pool, for the account queries in [`super::accounts`] (see the
    /// module's note on writing queries that run on both engines).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool, flushing the write-ahead log.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A database URL without its password, for messages.
fn redacted(options: &AnyConnectOptions) -> String {
    let mut url = options.database_url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_unlinked_agents_unseen_for_long_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let info = AgentInfo::default();
        let old = store.insert_agent(&[1; 32], &[0; 32], 1_000, &info).await.unwrap();
        let linked = store.insert_agent(&[2; 32], &[0; 32], 1_000, &info).await.unwrap();
        let recent = store.insert_agent(&[3; 32], &[0; 32], 9_000, &info).await.unwrap();
        sqlx::query("INSERT INTO accounts (email, created_at) VALUES ('a@b.c', 0)").execute(&store.pool).await.unwrap();
        sqlx::query(
            "INSERT INTO links (agent_id, account_id, alias, state, linked_at) VALUES ($1, 1, 'x', 'active', 0)",
        )
        .bind(linked)
        .execute(&store.pool)
        .await
        .unwrap();
        assert_eq!(store.forget_stale_agents(5_000).await.unwrap(), 1);
        assert!(store.agent_by_id(old).await.unwrap().is_none());
        assert!(store.agent_by_id(linked).await.unwrap().is_some());
        assert!(store.agent_by_id(recent).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn registrations_that_never_came_back_are_forgotten_after_hours() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let info = AgentInfo::default();
        let left = store.insert_agent(&[1; 32], &[0; 32], 1_000, &info).await.unwrap();
        let returned = store.insert_agent(&[2; 32], &[0; 32], 1_000, &info).await.unwrap();
        let online = store.insert_agent(&[3; 32], &[0; 32], 1_000, &info).await.unwrap();
        let recent = store.insert_agent(&[4; 32], &[0; 32], 9_000, &info).await.unwrap();
        store.mark_returned(returned, 2_000).await.unwrap();
        store.mark_seen(&[online], 9_500).await.unwrap();
        assert_eq!(store.forget_unreturned_agents(5_000).await.unwrap(), 1);
        assert!(store.agent_by_id(left).await.unwrap().is_none());
        for kept in [returned, online, recent] {
            assert!(store.agent_by_id(kept).await.unwrap().is_some(), "agent {kept}");
        }
    }
}
