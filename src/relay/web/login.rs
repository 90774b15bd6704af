//! Sign-in by email: the form, the mailed link (its GET only shows a button,
//! so mail scanners that fetch links sign nobody in), the short code for a
//! link opened on another device, and the session cookie at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Web;
use super::page::{Page, esc};
use crate::relay::accounts::normalize_email;
use crate::relay::signin::{self, LinkError, Redeemed};
use crate::relay::{mask, now_ms};

/// The cookie that binds a sign-in link to the browser that asked for it.
pub const SIGNIN_COOKIE: &str = "aic-signin";

/// The session cookie.
pub const SESSION_COOKIE: &str = "aic-session";

/// Links one email address may be sent per 15 minutes, and per day.
const PER_EMAIL_QUARTER: i64 = 3;
const PER_EMAIL_DAY: i64 = 10;

/// Where to go after signing in: a path on this relay, never another site.
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains(['\\', '\r', '\n']) => p.to_owned(),
        _ => "/dashboard".to_owned(),
    }
}

/// The query or form field naming where to go after signing in.
#[derive(Debug, Deserialize)]
pub struct Next {
    next: Option<String>,
}

fn email_form(next: &str, note: Option<&str>) -> Page {
    let mut page = Page::new("Sign in");
    if let Some(note) = note {
        page = page.raw(&format!("<p class=\"note\">{}</p>", esc(note)));
    }
    page.para("Type your email address; we send you a link that signs you in. No password needed.").raw(&format!(
        "<form method=\"post\" action=\"/login\" class=\"stack\">\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required>\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <button type=\"submit\">Email me a sign-in link</button></form>",
        esc(next)
    ))
}

/// `GET /login`.
pub async fn form(Query(q): Query<Next>) -> Response {
    email_form(&local_path(q.next.as_deref()), None).html().into_response()
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct AskForm {
    email: String,
    next: Option<String>,
}

fn limited(text: &str) -> Response {
    let page = email_form("/dashboard", Some(text));
    (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "900")], page.html()).into_response()
}

/// `POST /login`: checks the limits, stores a link bound to this browser and
/// queues the mail. The answer is the same whether or not the address has an
/// account.
pub async fn ask(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<AskForm>,
) -> Response {
    let next = local_path(form.next.as_deref());
    let Ok(email) = normalize_email(&form.email) else {
        let page = email_form(&next, Some("That is not an email address; type one like you@example.com."));
        return (StatusCode::BAD_REQUEST, page.html()).into_response();
    };
    let ip = web.state.config.proxies.client_ip(peer.ip(), &headers);
    let now = now_ms();
    match email_allowed(&web, &email, now).await {
        Ok(true) => {}
        Ok(false) => {
            return limited(
                "Several sign-in links went to this address in the last minutes. Use the newest one, or wait 15 minutes and ask again.",
            );
        }
        Err(e) => return internal(e),
    }
    if !web.state.signin_limits.per_ip.allow(&ip.to_string()) || !web.state.signin_limits.global.allow("") {
        return limited("Too many sign-in links were asked for from here. Wait 15 minutes and try again.");
    }
    let browser = signin::new_secret();
    let token = match signin::create_link(&web.state.store, &web.state.keys, &email, Some(&browser), &next, now).await {
        Ok(token) => token,
        Err(e) => return internal(e),
    };
    let sent = if !web.state.mailer.configured() {
        tracing::info!(
            to = %mask::email(&email),
            "sign-in asked for, but no --smtp-url is set: the operator can print a link with `aic-relay login-link`"
        );
        Sent::NoMail
    } else if web.state.mailer.send(&email, "Your aic sign-in link", mail_body(&web, &token)) {
        Sent::Queued
    } else {
        Sent::QueueFull
    };
    let cookie = web.set_cookie(SIGNIN_COOKIE, &browser, signin::LINK_LIFETIME);
    ([(header::SET_COOKIE, cookie)], check_mail(&email, sent).html()).into_response()
}

async fn email_allowed(web: &Web, email: &str, now: i64) -> anyhow::Result<bool> {
    let store = &web.state.store;
    let quarter = signin::links_since(store, email, now - 15 * 60_000).await?;
    let day = signin::links_since(store, email, now - 86_400_000).await?;
    Ok(quarter < PER_EMAIL_QUARTER && day < PER_EMAIL_DAY)
}

/// A link's URL on this relay.
pub fn link_url(web: &Web, token: &str) -> String {
    web.public.join(&format!("/login/link?t={token}"))
}

fn mail_body(web: &Web, token: &str) -> String {
    format!(
        "Someone (hopefully you) asked to sign in to the aic relay at {}.\n\n\
         Open this link and press the button to sign in. It works once, for 15 minutes:\n\n{}\n\n\
         If you open it on another device than the one you asked from, it shows a code: type that code \
         on the page where you asked.\n\nIf you did not ask, ignore this mail; nothing happens.\n",
        web.public,
        link_url(web, token)
    )
}

/// What became of a sign-in mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// On its way.
    Queued,
    /// Dropped: the queue was full.
    QueueFull,
    /// The relay has no SMTP server.
    NoMail,
}

fn check_mail(email: &str, sent: Sent) -> Page {
    let page = Page::new("Check your mail");
    let page = match sent {
        Sent::Queued => page.raw(&format!(
            "<p>If <strong>{}</strong> can receive mail, a sign-in link is on its way. It works once, for 15 minutes.</p>",
            esc(&mask::email(email))
        )),
        Sent::QueueFull => page.para("The relay could not queue the mail just now; wait a minute and ask again."),
        Sent::NoMail => page.para(
            "This relay sends no mail. Ask its operator for a sign-in link: they print one with \
             `aic-relay login-link YOUR-EMAIL`.",
        ),
    };
    page.para("Opened the link on another device? It shows a six-digit code: type it here.").raw(CODE_FORM)
}

/// The form where the code another device shows is typed.
const CODE_FORM: &str = "<form method=\"post\" action=\"/login/code\" class=\"stack\">\
    <label for=\"code\">Code</label>\
    <input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" maxlength=\"7\" required>\
    <button type=\"submit\">Sign in</button></form>";

/// The link's query: its secret.
#[derive(Debug, Deserialize)]
pub struct LinkQuery {
    t: Option<String>,
}

/// The page for a link that cannot be used, saying what to do.
fn expired() -> Response {
    let page = Page::new("This link has expired")
        .para(
            "This sign-in link was already used or is older than 15 minutes. Links work once, so that \
             nobody who sees an old one can use it.",
        )
        .raw("<p><a class=\"button\" href=\"/login\">Ask for a new link</a></p>");
    (StatusCode::GONE, page.html()).into_response()
}

/// `GET /login/link?t=…`: a button that signs in; nothing happens on GET.
pub async fn link_page(State(web): State<Arc<Web>>, Query(q): Query<LinkQuery>) -> Response {
    let token = q.t.unwrap_or_default();
    match signin::link_usable(&web.state.store, &web.state.keys, &token, now_ms()).await {
        Ok(true) => Page::new("Sign in to aic")
            .para("Press the button to finish signing in.")
            .button("/login/link", &[("t", &token)], "Sign in", "primary")
            .html()
            .into_response(),
        Ok(false) => expired(),
        Err(e) => internal(e),
    }
}

/// The link form's field.
#[derive(Debug, Deserialize)]
pub struct RedeemForm {
    t: String,
}

/// `POST /login/link`: signs in the browser that asked; another device is shown a code.
pub async fn redeem(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<RedeemForm>) -> Response {
    let browser = web.cookie(&headers, SIGNIN_COOKIE);
    let redeemed = signin::redeem_link(&web.state.store, &web.state.keys, &form.t, browser.as_deref(), now_ms()).await;
    match redeemed {
        Ok(Ok(Redeemed::SignedIn { email, next })) => sign_in(&web, &headers, &email, &next).await,
        Ok(Ok(Redeemed::ShowCode(code))) => Page::new("Type this code")
            .para("This link was opened on another device than the one that asked for it. On the page where you asked, type:")
            .raw(&format!("<p class=\"code\">{}</p>", esc(&code)))
            .para("It works for the rest of the link's 15 minutes, and only there.")
            .html()
            .into_response(),
        Ok(Err(_)) => expired(),
        Err(e) => internal(e),
    }
}

/// The code form's field.
#[derive(Debug, Deserialize)]
pub struct CodeForm {
    code: String,
}

/// `POST /login/code`: the code another device showed, typed in the browser that asked.
pub async fn code(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<CodeForm>) -> Response {
    let Some(browser) = web.cookie(&headers, SIGNIN_COOKIE) else { return expired() };
    match signin::redeem_code(&web.state.store, &web.state.keys, &browser, &form.code, now_ms()).await {
        Ok(Ok((email, next))) => sign_in(&web, &headers, &email, &next).await,
        Ok(Err(LinkError::WrongCode)) => {
            let page = Page::new("Wrong code").para("That is not the code the other device shows; try again.");
            (StatusCode::BAD_REQUEST, page.raw(CODE_FORM).html()).into_response()
        }
        Ok(Err(LinkError::Expired)) => expired(),
        Err(e) => internal(e),
    }
}

/// Makes (at first sign-in) the account, opens a fresh session and goes on to `next`.
async fn sign_in(web: &Web, headers: &HeaderMap, email: &str, next: &str) -> Response {
    let (store, keys, now) = (&web.state.store, &web.state.keys, now_ms());
    let old = web.cookie(headers, SESSION_COOKIE);
    let opened = async {
        let account = signin::sign_in_account(store, email, now).await?;
        signin::open_session(store, keys, account, old.as_deref(), now).await
    };
    let session = match opened.await {
        Ok(session) => session,
        Err(e) => return internal(e),
    };
    tracing::info!(who = %mask::email(email), "signed in on the web");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, local_path(Some(next)))]).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, web.set_cookie(SESSION_COOKIE, &session, signin::SESSION_LIFETIME));
    headers.append(header::SET_COOKIE, web.set_cookie(SIGNIN_COOKIE, "", Duration::ZERO));
    response
}

/// A fault the user cannot fix: logged, and a page saying to retry.
pub fn internal(e: anyhow::Error) -> Response {
    tracing::error!("web sign-in: {e:#}");
    let page = Page::new("Something went wrong").para("The relay hit an internal error; try again in a minute.");
    (StatusCode::INTERNAL_SERVER_ERROR, page.html()).into_response()
}
