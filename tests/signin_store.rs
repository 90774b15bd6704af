//! Sign-in, dashboard and OAuth queries on both engines: the same calls
//! against SQLite and a real PostgreSQL give the same answers.

#[path = "common/servers.rs"]
mod servers;

use aic::protocol::agent::AgentInfo;
use aic::relay::accounts::{self, LinkState, RenameError};
use aic::relay::keys::Keys;
use aic::relay::oauth::grants::{self, Grant};
use aic::relay::signin::{self, LinkError, Redeemed};
use aic::relay::store::Store;

fn keys() -> Keys {
    Keys::parse(&"cd".repeat(32)).unwrap()
}

/// Links (bound and unbound), codes, accounts made at sign-in, sessions.
async fn sign_in_round_trip(store: &Store) {
    let keys = keys();
    let unbound = signin::create_link(store, &keys, "ann@example.com", None, "/dashboard", 1_000).await.unwrap();
    let signed = signin::redeem_link(store, &keys, &unbound, Some("any"), 2_000).await.unwrap();
    assert_eq!(signed, Ok(Redeemed::SignedIn { email: "ann@example.com".into(), next: "/dashboard".into() }));
    let bound = signin::create_link(store, &keys, "ann@example.com", Some("b"), "/x", 3_000).await.unwrap();
    let Ok(Redeemed::ShowCode(code)) = signin::redeem_link(store, &keys, &bound, None, 3_000).await.unwrap() else {
        panic!("another device gets a code")
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(signin::redeem_code(store, &keys, "b", wrong, 3_000).await.unwrap(), Err(LinkError::WrongCode));
    assert_eq!(
        signin::redeem_code(store, &keys, "b", &code, 3_000).await.unwrap(),
        Ok(("ann@example.com".into(), "/x".into()))
    );
    assert_eq!(signin::links_since(store, "ann@example.com", 0).await.unwrap(), 2);
    let account = signin::sign_in_account(store, "ann@example.com", 4_000).await.unwrap();
    let session = signin::open_session(store, &keys, account, None, 4_000).await.unwrap();
    assert_eq!(signin::session_account(store, &keys, &session, 5_000).await.unwrap(), Some(account));
    let profile = accounts::profile(store, account).await.unwrap().unwrap();
    assert!(profile.daily_reactivation, "web accounts start with daily re-activation on");
    assert_eq!(profile.last_sign_in_at, Some(4_000));
    assert_eq!(signin::sweep(store, 1_000_000_000).await.unwrap(), 3, "one session and two links");
}

/// The dashboard's keys, machines and switch; re-activation on the key path.
async fn dashboard_round_trip(store: &Store) {
    let keys = keys();
    let account = signin::sign_in_account(store, "bo@example.com", 10).await.unwrap();
    let key = accounts::create_key(store, &keys, "bo@example.com", 10).await.unwrap();
    let found = accounts::authenticate(store, &keys, &key).await.unwrap().unwrap();
    assert_eq!(found.active_until, Some(10 + accounts::REACTIVATION_WINDOW.as_millis() as i64));
    accounts::set_daily_reactivation(store, "bo@example.com", false).await.unwrap();
    assert_eq!(accounts::authenticate(store, &keys, &key).await.unwrap().unwrap().active_until, None);
    let info = AgentInfo { hostname: "web".into(), ..AgentInfo::default() };
    let (a, b) = (
        store.insert_agent(&[21; 32], &[0; 32], 10, &info).await.unwrap(),
        store.insert_agent(&[22; 32], &[0; 32], 10, &info).await.unwrap(),
    );
    let first = accounts::create_link(store, a, account, "web", LinkState::Active, 20).await.unwrap();
    let second = accounts::create_link(store, b, account, "web", LinkState::Pending, 20).await.unwrap();
    assert_eq!(accounts::rename_link(store, account, second.id, "WEB").await.unwrap(), Err(RenameError::Taken));
    assert_eq!(accounts::rename_link(store, account, second.id, "db").await.unwrap(), Ok(()));
    assert_eq!(accounts::rename_link(store, account + 1, first.id, "x").await.unwrap(), Err(RenameError::NotFound));
    let machines = accounts::machines_of_account(store, account).await.unwrap();
    let aliases: Vec<&str> = machines.iter().map(|m| m.link.alias.as_str()).collect();
    assert_eq!(aliases, ["db", "web"]);
    assert_eq!(machines[1].code_hash, vec![21u8; 32]);
    let key_id = accounts::parse_key(&key).unwrap().0.to_owned();
    assert!(!accounts::revoke_own_key(store, account + 1, &key_id, 30).await.unwrap(), "not another's key");
    assert!(accounts::revoke_own_key(store, account, &key_id, 30).await.unwrap());
    let kept = 30 + signin::REVOKED_KEY_KEPT.as_millis() as i64;
    signin::sweep(store, kept).await.unwrap();
    assert_eq!(accounts::list_keys(store, "bo@example.com").await.unwrap().len(), 1, "revoked, still listed");
    signin::sweep(store, kept + 1).await.unwrap();
    assert!(accounts::list_keys(store, "bo@example.com").await.unwrap().is_empty(), "long revoked: deleted");
}

/// OAuth clients, codes and tokens.
async fn oauth_round_trip(store: &Store) {
    let keys = keys();
    let account = signin::sign_in_account(store, "cy@example.com", 1_000).await.unwrap();
    let client = grants::register(store, "App", &["http://127.0.0.1:1/cb".into()], 1_000).await.unwrap();
    assert_eq!(grants::registered(store, &client).await.unwrap().unwrap().redirect_uris, ["http://127.0.0.1:1/cb"]);
    let grant = Grant {
        client_id: client.clone(),
        account_id: account,
        redirect_uri: "http://127.0.0.1:1/cb".into(),
        code_challenge: "c".repeat(43),
        resource: "https://relay.example/mcp/oauth".into(),
    };
    let code = grants::issue_code(store, &keys, &grant, 1_000).await.unwrap();
    assert_eq!(grants::take_code(store, &keys, &code, 1_001).await.unwrap(), Some(grant.clone()));
    assert_eq!(grants::take_code(store, &keys, &code, 1_002).await.unwrap(), None, "a code works once");
    assert!(grants::issue_tokens(store, &keys, &grant, None, 1_000).await.unwrap().is_none(), "no grant, no tokens");
    grants::authorize(store, account, &client, "App", 1_000).await.unwrap();
    let tokens = grants::issue_tokens(store, &keys, &grant, None, 1_000).await.unwrap().unwrap();
    let bearer = grants::bearer(store, &keys, &tokens.access, 2_000).await.unwrap().unwrap();
    assert_eq!(
        (bearer.account_id, bearer.email.as_str(), bearer.daily_reactivation),
        (account, "cy@example.com", true)
    );
    assert!(grants::take_refresh(store, &keys, &tokens.refresh, "other", 2_000).await.unwrap().is_none());
    assert!(grants::take_refresh(store, &keys, &tokens.refresh, &client, 2_000).await.unwrap().is_some());
    assert!(grants::take_refresh(store, &keys, &tokens.refresh, &client, 2_001).await.unwrap().is_none());
    grants_round_trip(store, &grant).await;
    chains_end_also_mid_refresh(store, &grant).await;
    let unused = grants::register(store, "Left", &["https://x.example/cb".into()], 1_000).await.unwrap();
    assert!(grants::sweep(store, 1_000 + grants::UNUSED_CLIENT.as_millis() as i64 + 1).await.unwrap() >= 1);
    assert!(grants::registered(store, &unused).await.unwrap().is_none(), "an unused registration is cleaned up");
    assert!(grants::registered(store, &client).await.unwrap().is_some(), "a used one stays");
}

/// Two token chains of one client for one account, and one of another
/// account: "Connected apps", RFC 7009 revocation by chain, and the
/// dashboard's revocation of a whole grant.
async fn grants_round_trip(store: &Store, grant: &Grant) {
    let keys = keys();
    let other = signin::sign_in_account(store, "dee@example.com", 1_000).await.unwrap();
    let others = Grant { account_id: other, ..grant.clone() };
    grants::authorize(store, other, &grant.client_id, "App\u{7}", 1_500).await.unwrap();
    let theirs = grants::issue_tokens(store, &keys, &others, None, 1_500).await.unwrap().unwrap();
    let first = grants::issue_tokens(store, &keys, grant, None, 3_000).await.unwrap().unwrap();
    let second = grants::issue_tokens(store, &keys, grant, None, 3_000).await.unwrap().unwrap();
    let (_, chain) =
        grants::take_refresh(store, &keys, &first.refresh, &grant.client_id, 3_500).await.unwrap().unwrap();
    let renewed = grants::issue_tokens(store, &keys, grant, Some(&chain), 4_000).await.unwrap().unwrap();
    let listed = grants::connected(store, other, 5_000).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].authorized_at, listed[0].last_used_at), ("App", 1_500, 1_500));
    let mine = grants::connected(store, grant.account_id, 5_000).await.unwrap();
    assert_eq!((mine.len(), mine[0].authorized_at, mine[0].last_used_at), (1, 1_000, 4_000));

    use grants::Revocation::*;
    assert_eq!(grants::revoke_token(store, &keys, "aicr_unknown", &grant.client_id).await.unwrap(), Unknown);
    assert_eq!(grants::revoke_token(store, &keys, &renewed.refresh, "another").await.unwrap(), OtherClient);
    assert!(grants::bearer(store, &keys, &renewed.access, 5_000).await.unwrap().is_some(), "left alone");
    assert_eq!(grants::revoke_token(store, &keys, &renewed.refresh, &grant.client_id).await.unwrap(), Revoked);
    for ended in [&first.access, &renewed.access] {
        assert!(grants::bearer(store, &keys, ended, 5_000).await.unwrap().is_none(), "the chain's access tokens end");
    }
    assert_eq!(grants::revoke_token(store, &keys, &renewed.refresh, &grant.client_id).await.unwrap(), Unknown);
    assert!(grants::bearer(store, &keys, &second.access, 5_000).await.unwrap().is_some(), "another chain acts");
    assert_eq!(grants::revoke_token(store, &keys, &second.access, &grant.client_id).await.unwrap(), Revoked);
    assert!(grants::bearer(store, &keys, &second.access, 5_000).await.unwrap().is_none());

    assert!(grants::revoke_grant(store, grant.account_id, &grant.client_id).await.unwrap());
    assert!(grants::connected(store, grant.account_id, 5_000).await.unwrap().is_empty());
    assert!(grants::take_refresh(store, &keys, &second.refresh, &grant.client_id, 5_000).await.unwrap().is_none());
    assert!(grants::issue_tokens(store, &keys, grant, Some(&chain), 5_000).await.unwrap().is_none(), "revoked");
    assert!(!grants::revoke_grant(store, grant.account_id, &grant.client_id).await.unwrap(), "nothing left");
    assert!(grants::bearer(store, &keys, &theirs.access, 5_000).await.unwrap().is_some(), "another account's grant");
    assert_eq!(grants::connected(store, other, 5_000).await.unwrap().len(), 1);
    grants::authorize(store, grant.account_id, &grant.client_id, "App", 6_000).await.unwrap();
    grants::issue_tokens(store, &keys, grant, None, 6_000).await.unwrap().unwrap();
    assert_eq!(grants::connected(store, grant.account_id, 6_000).await.unwrap()[0].authorized_at, 6_000, "anew");
}

/// A chain revoked (RFC 7009) while a refresh of it is under way, between
/// its spend and its new pair, gets no new pair; a spent refresh token
/// presented again after the grace ends its chain, sooner it is only refused.
async fn chains_end_also_mid_refresh(store: &Store, grant: &Grant) {
    let keys = keys();
    grants::authorize(store, grant.account_id, &grant.client_id, "App", 7_000).await.unwrap();
    let first = grants::issue_tokens(store, &keys, grant, None, 7_000).await.unwrap().unwrap();
    let (_, chain) =
        grants::take_refresh(store, &keys, &first.refresh, &grant.client_id, 7_100).await.unwrap().unwrap();
    let revoked = grants::revoke_token(store, &keys, &first.refresh, &grant.client_id).await.unwrap();
    assert_eq!(revoked, grants::Revocation::Revoked);
    assert!(grants::issue_tokens(store, &keys, grant, Some(&chain), 7_200).await.unwrap().is_none(), "revoked");

    let first = grants::issue_tokens(store, &keys, grant, None, 8_000).await.unwrap().unwrap();
    let (_, chain) =
        grants::take_refresh(store, &keys, &first.refresh, &grant.client_id, 8_000).await.unwrap().unwrap();
    let second = grants::issue_tokens(store, &keys, grant, Some(&chain), 8_000).await.unwrap().unwrap();
    assert!(grants::take_refresh(store, &keys, &first.refresh, &grant.client_id, 8_001).await.unwrap().is_none());
    assert!(grants::bearer(store, &keys, &second.access, 8_002).await.unwrap().is_some(), "within the grace");
    let later = 8_000 + grants::REUSE_GRACE.as_millis() as i64 + 1;
    assert!(grants::take_refresh(store, &keys, &first.refresh, &grant.client_id, later).await.unwrap().is_none());
    assert!(grants::bearer(store, &keys, &second.access, later).await.unwrap().is_none(), "the chain ended");
    assert!(grants::take_refresh(store, &keys, &second.refresh, &grant.client_id, later).await.unwrap().is_none());
}

#[tokio::test]
async fn sign_in_and_oauth_queries_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    sign_in_round_trip(&store).await;
    dashboard_round_trip(&store).await;
    oauth_round_trip(&store).await;
    store.close().await;
}

#[tokio::test]
async fn sign_in_and_oauth_queries_on_postgres() {
    let Some(pg) = servers::Postgres::start() else { return };
    let store = Store::connect(&pg.url()).await.unwrap();
    sign_in_round_trip(&store).await;
    dashboard_round_trip(&store).await;
    oauth_round_trip(&store).await;
    store.close().await;
}
