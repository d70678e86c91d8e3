//! Signing in to the console: through an OIDC provider (authorization code + PKCE, `state` and
//! `nonce` kept in a short-lived sealed cookie), or by pasting a personal token from
//! `[[identity.users]]`. Both end in a session cookie; signing out clears it.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::session::{CookiePolicy, SESSION_COOKIE, b64, cookie, now_s, random_bytes};
use super::{Console, NextQuery, escape_html, html, safe_next, see_other, urlencode};
use crate::identity::{AuthError, Channel};
use crate::intake::verify::secrets_equal;

/// The double-submit cookie of the sign-in form (before there is a session to bind a token to).
const LOGIN_COOKIE: &str = "ferry_login";
/// The sealed `state`, `nonce` and PKCE verifier of a sign-in in progress.
const OIDC_COOKIE: &str = "ferry_oidc";
/// The largest sign-in or sign-out form accepted (or `server.body_limit`, when smaller): a pasted
/// token (even a JWT with many groups) fits many times over, and a bigger body is refused before
/// it is read.
pub const FORM_LIMIT: usize = 64 * 1024;
/// How long a person has at their identity provider.
const OIDC_LOGIN_TTL_S: i64 = 600;

/// A sign-in through an identity provider, between leaving and coming back.
#[derive(Serialize, Deserialize)]
struct Pending {
    issuer: usize,
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    exp: i64,
}

fn policy(console: &Console, headers: &HeaderMap) -> CookiePolicy {
    CookiePolicy::for_request(console.public_url.as_deref(), headers)
}

/// Where people reach this Ferry: `server.public_url`, else the request's Host (http on
/// loopback, https otherwise: anything else is a proxy terminating TLS).
fn base_url(console: &Console, headers: &HeaderMap) -> String {
    if let Some(url) = &console.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let authority = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = if policy(console, headers).secure { "https" } else { "http" };
    format!("{scheme}://{authority}")
}

/// `GET /login`: sign-in buttons for the configured providers and the token form.
pub async fn page(State(console): State<Arc<Console>>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    let notice = if q.expired.is_some() {
        Some("Your session expired. Sign in again.")
    } else if q.signed_out.is_some() {
        Some("You are signed out.")
    } else {
        None
    };
    login_page(&console, &headers, StatusCode::OK, &safe_next(q.next.as_deref()), notice, None)
}

fn login_page(
    console: &Console,
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    // The form's token must equal this cookie: another site can make a browser post the form,
    // but cannot read or set the cookie.
    let form_token = cookie(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| hex::encode(random_bytes::<16>()));
    let mut body = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · Ferry</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"stylesheet\" href=\"/console/app.css\"></head><body class=\"login\"><main class=\"login-box\">\
         <h1>Ferry</h1><p class=\"muted\">Promotions by digest, from build to prod.</p>",
    );
    if let Some(notice) = notice {
        body.push_str(&format!("<p class=\"notice\" id=\"notice\">{}</p>", escape_html(notice)));
    }
    if let Some(error) = error {
        body.push_str(&format!("<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>", escape_html(error)));
    }
    let next_q = urlencode(next);
    let providers = console.identity.as_ref().map(|i| i.login_issuers()).unwrap_or_default();
    for provider in &providers {
        body.push_str(&format!(
            "<p><a class=\"button primary\" id=\"sign-in-{index}\" href=\"/login/oidc/{index}?next={next_q}\">Sign in with {label}</a></p>",
            index = provider.index,
            label = escape_html(&provider.label),
        ));
    }
    if console.identity.is_some() {
        if !providers.is_empty() {
            body.push_str("<p class=\"muted or\">or</p>");
        }
        body.push_str(&format!(
            "<form method=\"post\" action=\"/login/token\" id=\"token-form\">\
             <label for=\"token\">Personal token</label>\
             <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required>\
             <input type=\"hidden\" name=\"csrf\" value=\"{form_token}\">\
             <input type=\"hidden\" name=\"next\" value=\"{next}\">\
             <button type=\"submit\" id=\"token-sign-in\">Sign in with token</button></form>",
            next = escape_html(next),
        ));
    } else {
        body.push_str(
            "<p class=\"error\" id=\"login-error\">This Ferry has no [identity] configured: the console needs \
             people to sign in as themselves. Add [[identity.users]] (ferry token hash --generate) or an \
             [[identity.oidc]] issuer with a client_id, and restart.</p>",
        );
    }
    body.push_str("</main></body></html>");
    let mut response = html(status, body);
    let set = policy(console, headers).set(LOGIN_COOKIE, &form_token, "/login", OIDC_LOGIN_TTL_S);
    response.headers_mut().append(header::SET_COOKIE, set);
    response
}

/// What to tell someone whose form could not be read (too large, or cut off).
fn unreadable_form(console: &Console, rejection: &BytesRejection) -> String {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        format!("The form is too large (over {} KiB): paste only your personal token.", console.form_limit / 1024)
    } else {
        format!("The form could not be read ({}). Try again.", rejection.body_text())
    }
}

fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// `POST /login/token`: a personal token from `[[identity.users]]` (or an OIDC JWT) starts a
/// session. The shared operator token does not: it names nobody.
pub async fn with_token(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            let message = unreadable_form(&console, &e);
            return login_page(&console, &headers, e.status(), "/", None, Some(&message));
        }
    };
    let fields = form(&body);
    let next = safe_next(fields.get("next").map(String::as_str));
    let refuse = |status, message: &str| login_page(&console, &headers, status, &next, None, Some(message));
    let presented = fields.get("csrf").map(String::as_str).unwrap_or_default();
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !secrets_equal(presented.as_bytes(), expected.as_bytes()) {
        return refuse(StatusCode::FORBIDDEN, "The sign-in form expired or came from another site. Try again.");
    }
    let Some(identity) = &console.identity else {
        return refuse(StatusCode::UNAUTHORIZED, "No [identity] is configured.");
    };
    let token = fields.get("token").map(|t| t.trim()).unwrap_or_default();
    if token.is_empty() {
        // Not the API's "missing bearer token": nobody filling in this form sends headers.
        return refuse(StatusCode::BAD_REQUEST, "Paste your personal token to sign in.");
    }
    let caller = match identity.authenticate(token).await {
        Ok(caller) => caller,
        Err(AuthError::IssuerUnavailable(e)) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e),
        Err(AuthError::UnknownToken) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "Unknown token. Paste a personal token from [[identity.users]] (the shared operator token \
                 names nobody and does not open the console).",
            );
        }
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    signed_in(&console, &headers, &caller, &next)
}

/// Starts the session for `caller` and sends them on to `next`.
fn signed_in(console: &Console, headers: &HeaderMap, caller: &crate::identity::Caller, next: &str) -> Response {
    let (session, sealed) = match console.sessions.start(caller) {
        Ok(s) => s,
        Err(e) => return login_page(console, headers, StatusCode::BAD_REQUEST, next, None, Some(&e)),
    };
    tracing::info!(
        target: "ferry::audit",
        action = "sign-in",
        subject = %crate::escape::escape_control(&session.sub),
        via = %session.via,
        "console sign-in"
    );
    let policy = policy(console, headers);
    let mut response = see_other(next);
    let h = response.headers_mut();
    // The cookie outlives the session by an hour so that the console can say "expired" rather
    // than "not signed in"; the sealed expiry is what counts.
    h.append(header::SET_COOKIE, policy.set(SESSION_COOKIE, &sealed, "/", console.sessions.ttl_s() + 3600));
    h.append(header::SET_COOKIE, policy.clear(LOGIN_COOKIE, "/login"));
    h.append(header::SET_COOKIE, policy.clear(OIDC_COOKIE, "/login"));
    response
}

/// `GET /login/oidc/{index}`: off to the identity provider with a PKCE challenge.
pub async fn start_oidc(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(index): Path<usize>,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    let refuse = |status, message: &str| login_page(&console, &headers, status, &next, None, Some(message));
    let Some(identity) = &console.identity else {
        return refuse(StatusCode::NOT_FOUND, "No identity provider is configured.");
    };
    let Some(provider) = identity.login_issuers().into_iter().find(|p| p.index == index) else {
        return refuse(StatusCode::NOT_FOUND, "No such identity provider.");
    };
    let endpoint = match identity.discovery(index).await {
        Ok(d) => d.authorization_endpoint,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("{} is unavailable: {e}", provider.label)),
    };
    let Some(endpoint) = endpoint else {
        return refuse(
            StatusCode::BAD_GATEWAY,
            &format!("{} lists no authorization_endpoint: it cannot sign people in", provider.label),
        );
    };
    let pending = Pending {
        issuer: index,
        state: b64(&random_bytes::<24>()),
        nonce: b64(&random_bytes::<24>()),
        verifier: b64(&random_bytes::<32>()),
        next: next.clone(),
        exp: now_s() + OIDC_LOGIN_TTL_S,
    };
    let challenge = b64(&Sha256::digest(pending.verifier.as_bytes()));
    let redirect_uri = format!("{}/login/callback", base_url(&console, &headers));
    let mut url = match url::Url::parse(&endpoint) {
        Ok(u) => u,
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, &format!("authorization_endpoint: {e}")),
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &provider.scopes.join(" "))
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let sealed = console.sessions.seal("oidc-login", &pending);
    let mut response = see_other(url.as_str());
    response
        .headers_mut()
        .append(header::SET_COOKIE, policy(&console, &headers).set(OIDC_COOKIE, &sealed, "/login", OIDC_LOGIN_TTL_S));
    response
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/callback`: back from the identity provider; the code is redeemed with the
/// verifier and the ID token checked (signature, issuer, audience, expiry, nonce).
pub async fn callback(State(console): State<Arc<Console>>, headers: HeaderMap, Query(q): Query<Callback>) -> Response {
    let refuse = |status, next: &str, message: &str| login_page(&console, &headers, status, next, None, Some(message));
    let pending: Option<Pending> =
        cookie(&headers, OIDC_COOKIE).and_then(|sealed| console.sessions.open("oidc-login", &sealed));
    let Some(pending) = pending.filter(|p| p.exp > now_s()) else {
        return refuse(StatusCode::BAD_REQUEST, "/", "This sign-in was not started here or took too long. Try again.");
    };
    if let Some(error) = q.error {
        let description = q.error_description.unwrap_or_default();
        return refuse(
            StatusCode::UNAUTHORIZED,
            &pending.next,
            &format!("The identity provider said: {error} {description}"),
        );
    }
    let state = q.state.unwrap_or_default();
    if !secrets_equal(state.as_bytes(), pending.state.as_bytes()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            &pending.next,
            "The sign-in answer does not belong to this sign-in (state). Try again.",
        );
    }
    let Some(identity) = &console.identity else {
        return refuse(StatusCode::NOT_FOUND, "/", "No identity provider is configured.");
    };
    let code = q.code.unwrap_or_default();
    let redirect_uri = format!("{}/login/callback", base_url(&console, &headers));
    match identity.redeem_code(pending.issuer, &code, &pending.verifier, &redirect_uri, &pending.nonce).await {
        Ok(caller) if caller.channel == Channel::Oidc => signed_in(&console, &headers, &caller, &pending.next),
        Ok(_) => refuse(StatusCode::UNAUTHORIZED, &pending.next, "Not an OIDC identity."),
        Err(AuthError::IssuerUnavailable(e)) => refuse(StatusCode::SERVICE_UNAVAILABLE, &pending.next, &e),
        Err(e) => refuse(StatusCode::UNAUTHORIZED, &pending.next, &format!("Sign-in refused: {e}")),
    }
}

/// `POST /logout` (the session's CSRF token in the form): clears the session cookie.
pub async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return (e.status(), unreadable_form(&console, &e)).into_response(),
    };
    let fields = form(&body);
    let presented = fields.get("csrf").map(String::as_str).unwrap_or_default();
    match console.sessions.session(&headers) {
        Ok(session) if !session.csrf_matches(presented) => {
            (StatusCode::FORBIDDEN, "missing or wrong CSRF token: reload the console and sign out again")
                .into_response()
        }
        _ => {
            let mut response = see_other("/login?signed_out=1");
            response.headers_mut().append(header::SET_COOKIE, policy(&console, &headers).clear(SESSION_COOKIE, "/"));
            response
        }
    }
}
