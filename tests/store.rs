//! The store's queries on both engines: the same calls against SQLite and a
//! real PostgreSQL give the same answers.

#[path = "common/servers.rs"]
mod servers;

use aic::protocol::agent::AgentInfo;
use aic::relay::accounts::{self, LinkState};
use aic::relay::keys::Keys;
use aic::relay::store::{Backend, Store};

fn keys() -> Keys {
    Keys::parse(&"ab".repeat(32)).unwrap()
}

/// Agents: insert, find by code, rotate the token, reset the code, forget.
async fn agents_round_trip(store: &Store) {
    let info = AgentInfo { hostname: "web".into(), ..AgentInfo::default() };
    let id = store.insert_agent(&[1; 32], &[2; 32], 1_000, &info).await.unwrap();
    assert!(store.insert_agent(&[1; 32], &[3; 32], 1_000, &info).await.is_err(), "a code hash is unique");
    let found = store.agent_by_code(&[1; 32]).await.unwrap().expect("found by code");
    assert_eq!((found.id, found.token_hash.as_slice(), found.prev_token_hash), (id, &[2u8; 32][..], None));
    assert_eq!(found.agent_info.hostname, "web");
    store.rotate_token(id, &[4; 32], &[2; 32]).await.unwrap();
    let found = store.agent_by_code(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(found.prev_token_hash.as_deref(), Some(&[2u8; 32][..]));
    store.forget_previous_token(id).await.unwrap();
    assert_eq!(store.agent_by_code(&[1; 32]).await.unwrap().unwrap().prev_token_hash, None);
    store.reset_code(id, &[5; 32], 2_000).await.unwrap();
    assert!(store.agent_by_code(&[1; 32]).await.unwrap().is_none(), "the old code stops matching");
    let (code_hash, record) = store.agent_by_id(id).await.unwrap().unwrap();
    assert_eq!((code_hash, record.code_created_ms), (vec![5u8; 32], 2_000));
    store.mark_returned(id, 2_500).await.unwrap();
    store.mark_seen(&[id], 3_000).await.unwrap();
    let left = store.insert_agent(&[6; 32], &[0; 32], 1_000, &info).await.unwrap();
    assert_eq!(store.forget_unreturned_agents(2_000).await.unwrap(), 1);
    assert!(store.agent_by_id(left).await.unwrap().is_none());
    assert_eq!(store.forget_stale_agents(2_000).await.unwrap(), 0);
}

/// Accounts, keys and links, as the CLI and the exec path use them.
async fn accounts_round_trip(store: &Store) {
    let keys = keys();
    let key = accounts::add_account(store, &keys, "Ops@Example.com", 10).await.unwrap();
    let err = accounts::add_account(store, &keys, "ops@example.com", 11).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let account = accounts::authenticate(store, &keys, &key).await.unwrap().expect("the key works");
    assert_eq!(account.email, "ops@example.com");
    assert!(accounts::authenticate(store, &keys, &format!("{key}x")).await.unwrap().is_none());
    let agent = store.insert_agent(&[9; 32], &[0; 32], 10, &AgentInfo::default()).await.unwrap();
    let first = accounts::create_link(store, agent, account.id, "web", LinkState::Pending, 20).await.unwrap();
    assert_eq!((first.alias.as_str(), first.state), ("web", LinkState::Pending));
    let other = store.insert_agent(&[8; 32], &[0; 32], 10, &AgentInfo::default()).await.unwrap();
    let second = accounts::create_link(store, other, account.id, "WEB", LinkState::Active, 30).await.unwrap();
    assert_eq!(second.alias, "WEB-2", "aliases are unique without regard to case");
    assert_eq!(accounts::link_by_alias(store, account.id, "web-2").await.unwrap().unwrap().id, second.id);
    assert!(accounts::set_link_state(store, agent, first.id, &[LinkState::Pending], LinkState::Blocked).await.unwrap());
    assert!(!accounts::set_link_state(store, agent, first.id, &[LinkState::Pending], LinkState::Active).await.unwrap());
    let links = accounts::links_of_agent(store, agent).await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!((links[0].0.state, links[0].1.as_str()), (LinkState::Blocked, "ops@example.com"));
    let usage = accounts::Usage::default();
    usage.note(&account.key_id, second.id, 99);
    usage.flush(store).await.unwrap();
    let listed = accounts::list_keys(store, "ops@example.com").await.unwrap();
    assert_eq!((listed.len(), listed[0].last_used_at), (1, Some(99)));
    let all = accounts::list_accounts(store).await.unwrap();
    assert_eq!((all.len(), all[0].keys, all[0].links), (1, 1, 2));
    accounts::revoke_key(store, &account.key_id, 100).await.unwrap();
    assert!(accounts::authenticate(store, &keys, &key).await.unwrap().is_none(), "a revoked key stops working");
    accounts::remove_account(store, "ops@example.com").await.unwrap();
    assert!(accounts::links_of_agent(store, other).await.unwrap().is_empty(), "links go with their account");
}

/// An account's machines, as `GET /api/v1/machines` and the dashboard list and rename them.
async fn machines_round_trip(store: &Store) {
    use aic::relay::machines::{self, RenameError};
    let keys = keys();
    let key = accounts::add_account(store, &keys, "m@example.com", 10).await.unwrap();
    let account = accounts::authenticate(store, &keys, &key).await.unwrap().unwrap();
    let info = AgentInfo { hostname: "db".into(), os: "linux".into(), ..AgentInfo::default() };
    let agent = store.insert_agent(&[20; 32], &[0; 32], 10, &info).await.unwrap();
    accounts::create_link(store, agent, account.id, "db", LinkState::Active, 20).await.unwrap();
    let other = store.insert_agent(&[21; 32], &[0; 32], 10, &info).await.unwrap();
    accounts::create_link(store, other, account.id, "cache", LinkState::Pending, 30).await.unwrap();
    let hub = aic::relay::hub::Hub::default();
    let listed = machines::list(store, &hub, None, account.id).await.unwrap();
    let seen: Vec<_> = listed.iter().map(|m| (m.alias.as_str(), m.link, m.online, m.os.as_str())).collect();
    assert_eq!(seen, [("cache", LinkState::Pending, false, "linux"), ("db", LinkState::Active, false, "linux")]);
    machines::rename(store, account.id, "DB", "db-primary").await.unwrap();
    let taken = machines::rename(store, account.id, "cache", "DB-PRIMARY").await.unwrap_err();
    assert!(matches!(taken, RenameError::Taken(_)), "{taken}");
    let missing = machines::rename(store, account.id, "nope", "x").await.unwrap_err();
    assert!(matches!(missing, RenameError::NotFound(_)), "{missing}");
    let names: Vec<_> =
        machines::list(store, &hub, None, account.id).await.unwrap().into_iter().map(|m| m.alias).collect();
    assert_eq!(names, ["cache", "db-primary"]);
}

#[tokio::test]
async fn the_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    agents_round_trip(&store).await;
    accounts_round_trip(&store).await;
    machines_round_trip(&store).await;
    store.close().await;
    // Opening again finds the schema done.
    Store::open(dir.path()).await.unwrap().close().await;
}

#[tokio::test]
async fn the_store_on_postgres() {
    let Some(pg) = servers::Postgres::start() else { return };
    // Three relays starting at once on an empty database: one migrates, the others find it done.
    let url = pg.url();
    let (a, b, c) = tokio::join!(Store::connect(&url), Store::connect(&url), Store::connect(&url));
    let (store, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(store.backend(), Backend::Postgres);
    agents_round_trip(&store).await;
    accounts_round_trip(&store).await;
    machines_round_trip(&store).await;
    // What one relay wrote, another reads.
    let id = store.insert_agent(&[7; 32], &[0; 32], 5, &AgentInfo::default()).await.unwrap();
    assert_eq!(b.agent_by_code(&[7; 32]).await.unwrap().unwrap().id, id);
    for s in [store, b, c] {
        s.close().await;
    }
}

#[tokio::test]
async fn a_bad_database_url_says_what_to_do() {
    let err = Store::connect("mysql://u:hunter2@db/x").await.err().unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("only postgres:// URLs") && !text.contains("hunter2"), "{text}");
    let (_closed, port) = servers::closed_port();
    let err = Store::connect(&format!("postgres://u:hunter2@127.0.0.1:{port}/x")).await.err().unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("is PostgreSQL running there?") && !text.contains("hunter2"), "{text}");
}
