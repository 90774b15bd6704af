//! The account's dashboard: who it is, its API keys (made, shown once,
//! revoked), the AI clients it connected by OAuth (revoked), its machines
//! (renamed, with their state and whether they are online), the daily
//! re-activation switch, and signing out.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Web;
use super::login::{SESSION_COOKIE, internal};
use super::page::{Page, esc, form};
use crate::duration::utc;
use crate::protocol::agent::AgentInfo;
use crate::relay::accounts::{self, LinkState, Profile, RenameError};
use crate::relay::oauth::grants::{self, Connected};
use crate::relay::{now_ms, signin, status};

/// The signed-in account, or the answer that sends the browser to sign in.
async fn signed_in(web: &Web, headers: &HeaderMap) -> Result<(i64, Profile), Response> {
    let to_login = || (StatusCode::SEE_OTHER, [(header::LOCATION, "/login?next=/dashboard")]).into_response();
    let Some(cookie) = web.cookie(headers, SESSION_COOKIE) else { return Err(to_login()) };
    let store = &web.state.store;
    let account = signin::session_account(store, &web.state.keys, &cookie, now_ms()).await.map_err(internal)?;
    let Some(account) = account else { return Err(to_login()) };
    match accounts::profile(store, account).await.map_err(internal)? {
        Some(profile) => Ok((account, profile)),
        None => Err(to_login()),
    }
}

fn back(note: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, format!("/dashboard?note={note}"))]).into_response()
}

/// The dashboard's query: what just happened.
#[derive(Debug, Deserialize)]
pub struct Note {
    note: Option<String>,
}

fn note_text(note: Option<&str>) -> Option<&'static str> {
    Some(match note? {
        "revoked" => "Key revoked: requests with it get 401 from now on.",
        "app-revoked" => {
            "App disconnected: its tokens stopped working; it can act as you again only if you allow it again."
        }
        "renamed" => "Machine renamed.",
        "reactivation-on" => "Daily re-activation is on.",
        "reactivation-off" => "Daily re-activation is off.",
        "not-found" => "That key, app or machine is not one of yours (any more).",
        _ => return None,
    })
}

/// `GET /dashboard`.
pub async fn show(State(web): State<Arc<Web>>, headers: HeaderMap, Query(q): Query<Note>) -> Response {
    let (account, profile) = match signed_in(&web, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let store = &web.state.store;
    let listed = async {
        Ok::<_, anyhow::Error>((
            accounts::list_keys(store, &profile.email).await?,
            grants::connected(store, account, now_ms()).await?,
            accounts::machines_of_account(store, account).await?,
        ))
    };
    let (keys, apps, machines) = match listed.await {
        Ok(listed) => listed,
        Err(e) => return internal(e),
    };
    let mut online = Vec::with_capacity(machines.len());
    for m in &machines {
        online.push(status::online(&web.state, &m.code_hash).await);
    }
    let mut page = Page::new("Your account");
    if let Some(text) = note_text(q.note.as_deref()) {
        page = page.raw(&format!("<p class=\"note\">{}</p>", esc(text)));
    }
    page.raw(&account_section(&profile))
        .raw(&keys_section(&keys))
        .raw(&apps_section(&apps))
        .raw(&machines_section(&machines, &online))
        .raw(&reactivation_section(&profile))
        .html()
        .into_response()
}

fn account_section(profile: &Profile) -> String {
    let signed = profile.last_sign_in_at.map_or_else(|| "never".to_owned(), utc);
    format!(
        "<section><h2>Account</h2><dl><dt>Email</dt><dd>{}</dd><dt>Since</dt><dd>{}</dd>\
         <dt>Last sign-in</dt><dd>{}</dd></dl>{}</section>",
        esc(&profile.email),
        esc(&utc(profile.created_at)),
        esc(&signed),
        form("/logout", &[], "Sign out", "secondary"),
    )
}

fn keys_section(keys: &[accounts::KeyRow]) -> String {
    let rows: String = keys
        .iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| {
            let used = k.last_used_at.map_or_else(|| "never".to_owned(), utc);
            format!(
                "<tr><td data-label=\"Key\"><code>aic_{id}_…</code></td><td data-label=\"Created\">{}</td>\
                 <td data-label=\"Last used\">{}</td><td>{}</td></tr>",
                esc(&utc(k.created_at)),
                esc(&used),
                form("/dashboard/keys/revoke", &[("key_id", &k.key_id)], "Revoke", "danger"),
                id = esc(&k.key_id),
            )
        })
        .collect();
    let table = if rows.is_empty() {
        "<p>No API keys yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th>Key</th><th>Created</th><th>Last used</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    format!(
        "<section><h2>API keys</h2><p>A key lets a program act as you: send it as \
         <code>Authorization: Bearer aic_…</code>.</p>{table}{}</section>",
        form("/dashboard/keys", &[], "Create a key", "primary")
    )
}

fn apps_section(apps: &[Connected]) -> String {
    let rows: String = apps
        .iter()
        .map(|a| {
            format!(
                "<tr><td data-label=\"App\">{name}</td><td data-label=\"Authorised\">{since}</td>\
                 <td data-label=\"Last used\">{used}</td><td>{revoke}</td></tr>",
                name = esc(&a.name),
                since = esc(&utc(a.authorized_at)),
                used = esc(&utc(a.last_used_at)),
                revoke = form("/dashboard/apps/revoke", &[("client_id", &a.client_id)], "Revoke", "danger"),
            )
        })
        .collect();
    let body = if rows.is_empty() {
        "<p>No apps connected. An AI client you sign in with OAuth (Claude Code, ChatGPT, any MCP client) \
         is listed here until its access ends.</p>"
            .to_owned()
    } else {
        format!(
            "<table><thead><tr><th>App</th><th>Authorised</th><th>Last used</th><th></th></tr></thead>\
             <tbody>{rows}</tbody></table>"
        )
    };
    format!(
        "<section id=\"apps\"><h2>Connected apps</h2><p>Each acts as you, as your API keys do. Revoke ends \
         all its access at once; it must ask you again to act as you.</p>{body}</section>"
    )
}

fn machines_section(machines: &[accounts::Machine], online: &[bool]) -> String {
    let rows: String = machines.iter().zip(online).map(|(m, &online)| machine_row(m, online)).collect();
    let body = if rows.is_empty() {
        "<p>No machines yet. A machine is linked to your account the first time you run a command on it \
         with its session code and your key or sign-in.</p>"
            .to_owned()
    } else {
        format!(
            "<table><thead><tr><th>Alias</th><th>Machine</th><th>State</th><th>Online</th><th>Last used</th></tr></thead>\
             <tbody>{rows}</tbody></table>"
        )
    };
    format!("<section><h2>Machines</h2>{body}</section>")
}

fn machine_row(m: &accounts::Machine, online: bool) -> String {
    let info: AgentInfo = serde_json::from_str(&m.agent_info).unwrap_or_default();
    let state = match m.link.state {
        LinkState::Active => "active",
        LinkState::Pending => "pending (waits for the machine's operator to approve)",
        LinkState::Blocked => "blocked by the machine's operator",
    };
    let used = m.link.last_used_at.map_or_else(|| "never".to_owned(), utc);
    format!(
        "<tr><td data-label=\"Alias\"><form method=\"post\" action=\"/dashboard/machines/rename\" class=\"rename\">\
         <input type=\"hidden\" name=\"link_id\" value=\"{id}\">\
         <input name=\"alias\" value=\"{alias}\" aria-label=\"Alias\" maxlength=\"48\" required>\
         <button type=\"submit\" class=\"secondary\">Rename</button></form></td>\
         <td data-label=\"Machine\">{host} <small>{os}/{arch}</small></td><td data-label=\"State\">{state}</td>\
         <td data-label=\"Online\">{online}</td><td data-label=\"Last used\">{used}</td></tr>",
        id = m.link.id,
        alias = esc(&m.link.alias),
        host = esc(&info.hostname),
        os = esc(&info.os),
        arch = esc(&info.arch),
        online = if online { "online" } else { "offline" },
        used = esc(&used),
    )
}

fn reactivation_section(profile: &Profile) -> String {
    if profile.daily_reactivation {
        format!(
            "<section><h2>Daily re-activation: on</h2><p>Your API keys and connected AI clients act only within \
             24 hours of a sign-in here. A key that leaks is useless once you have not signed in for a day.</p>{}</section>",
            form("/dashboard/reactivation", &[("on", "off")], "Turn off (less safe)", "danger")
        )
    } else {
        format!(
            "<section class=\"risk\"><h2>Daily re-activation: off</h2><p><strong>Risk:</strong> your API keys and \
             connected AI clients act at any time, however long since you signed in; a leaked key works until you \
             revoke it.</p>{}</section>",
            form("/dashboard/reactivation", &[("on", "on")], "Turn on (recommended)", "primary")
        )
    }
}

/// `POST /dashboard/keys`: a new key, shown once.
pub async fn create_key(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (_, profile) = match signed_in(&web, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let key = match accounts::create_key(&web.state.store, &web.state.keys, &profile.email, now_ms()).await {
        Ok(key) => key,
        Err(e) => return internal(e),
    };
    Page::new("Your new API key")
        .para("Copy it now: it is shown only this once. Anyone holding it can act as you, so keep it secret.")
        .raw(&format!("<p><code class=\"secret\" id=\"new-key\">{}</code></p>", esc(&key)))
        .raw("<p><a class=\"button\" href=\"/dashboard\">Back to your account</a></p>")
        .html()
        .into_response()
}

/// The revoke form's field.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    key_id: String,
}

/// `POST /dashboard/keys/revoke`.
pub async fn revoke_key(State(web): State<Arc<Web>>, headers: HeaderMap, Form(f): Form<RevokeForm>) -> Response {
    let (account, _) = match signed_in(&web, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match accounts::revoke_own_key(&web.state.store, account, &f.key_id, now_ms()).await {
        Ok(true) => back("revoked"),
        Ok(false) => back("not-found"),
        Err(e) => internal(e),
    }
}

/// The app revoke form's field.
#[derive(Debug, Deserialize)]
pub struct RevokeAppForm {
    client_id: String,
}

/// `POST /dashboard/apps/revoke`: ends every token the account's grant of the client holds.
pub async fn revoke_app(State(web): State<Arc<Web>>, headers: HeaderMap, Form(f): Form<RevokeAppForm>) -> Response {
    let (account, profile) = match signed_in(&web, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match grants::revoke_grant(&web.state.store, account, &f.client_id).await {
        Ok(true) => {
            tracing::info!(who = %crate::relay::mask::email(&profile.email), "OAuth client revoked on the dashboard");
            back("app-revoked")
        }
        Ok(false) => back("not-found"),
        Err(e) => internal(e),
    }
}

/// The rename form's fields.
#[derive(Debug, Deserialize)]
pub struct RenameForm {
    link_id: i64,
    alias: String,
}

/// `POST /dashboard/machines/rename`.
pub async fn rename(State(web): State<Arc<Web>>, headers: HeaderMap, Form(f): Form<RenameForm>) -> Response {
    let (account, _) = match signed_in(&web, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match accounts::rename_link(&web.state.store, account, f.link_id, &f.alias).await {
        Ok(Ok(())) => back("renamed"),
        Ok(Err(RenameError::NotFound)) => back("not-found"),
        Ok(Err(why)) => {
            let page = Page::new("Not renamed")
                .para(&format!("{why}; pick another."))
                .raw("<p><a class=\"button\" href=\"/dashboard\">Back to your account</a></p>");
            (StatusCode::BAD_REQUEST, page.html()).into_response()
        }
        Err(e) => internal(e),
    }
}

/// The re-activation form's field: `on` or `off`.
#[derive(Debug, Deserialize)]
pub struct SwitchForm {
    on: String,
}

/// `POST /dashboard/reactivation`.
pub async fn reactivation(State(web): State<Arc<Web>>, headers: HeaderMap, Form(f): Form<SwitchForm>) -> Response {
    let (account, _) = match signed_in(&web, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let on = f.on == "on";
    match accounts::set_daily_reactivation_of(&web.state.store, account, on).await {
        Ok(()) => back(if on { "reactivation-on" } else { "reactivation-off" }),
        Err(e) => internal(e),
    }
}

/// `POST /logout`: ends the session and forgets its cookie.
pub async fn sign_out(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Some(cookie) = web.cookie(&headers, SESSION_COOKIE)
        && let Err(e) = signin::close_session(&web.state.store, &web.state.keys, &cookie).await
    {
        return internal(e);
    }
    let page = Page::new("Signed out").raw("<p><a class=\"button\" href=\"/login\">Sign in again</a></p>");
    ([(header::SET_COOKIE, web.set_cookie(SESSION_COOKIE, "", Duration::ZERO))], page.html()).into_response()
}
