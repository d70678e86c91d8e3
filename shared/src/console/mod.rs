//! The web console `ferry serve` (and the API function on AWS) serves at `/`: one page of plain
//! HTML, CSS and JavaScript embedded in the binary, which reads and acts through the operations
//! API (`/api/*`) with the session cookie and the session's CSRF token. Sign-in is through an
//! OIDC provider (authorization code + PKCE) or by pasting a personal token; both end in the same
//! sealed session cookie ([`session`]).

pub mod login;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::identity::Authenticator;
use session::{SessionError, Sessions};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the console's routes share.
pub struct Console {
    pub sessions: Arc<Sessions>,
    pub identity: Option<Arc<Authenticator>>,
    /// `server.public_url`: the sign-in redirect and cookie policy follow it when set.
    pub public_url: Option<String>,
    /// The largest sign-in or sign-out form read: [`login::FORM_LIMIT`] or `server.body_limit`.
    pub form_limit: usize,
}

pub fn router(console: Arc<Console>) -> Router {
    let form_limit = console.form_limit;
    Router::new()
        .route("/", get(page))
        .route("/promotions/{id}", get(page_at))
        .route("/pipelines/{name}", get(page_at))
        .route("/dead-letters", get(page))
        .route("/login", get(login::page))
        .route("/login/token", post(login::with_token).layer(DefaultBodyLimit::max(form_limit)))
        .route("/login/oidc/{index}", get(login::start_oidc))
        .route("/login/callback", get(login::callback))
        .route("/logout", post(login::logout).layer(DefaultBodyLimit::max(form_limit)))
        .route("/console/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/console/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .with_state(console)
}

async fn page(State(console): State<Arc<Console>>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    shell(&console, &uri, &headers)
}

async fn page_at(
    State(console): State<Arc<Console>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Path(_): Path<String>,
) -> Response {
    shell(&console, &uri, &headers)
}

/// The console page for a signed-in person; anyone else is sent to sign in and brought back.
fn shell(console: &Console, uri: &axum::http::Uri, headers: &HeaderMap) -> Response {
    let here = uri.path_and_query().map_or("/", |p| p.as_str());
    match console.sessions.session(headers) {
        Ok(session) => html(StatusCode::OK, INDEX_HTML.replace("{{csrf}}", &session.csrf)),
        Err(why) => {
            let mut to = format!("/login?next={}", urlencode(here));
            if why == SessionError::Expired {
                to.push_str("&expired=1");
            }
            see_other(&to)
        }
    }
}

/// Headers every console page carries: no inline script or style may run (so text from
/// webhooks can never become code), no framing, no caching of pages with a CSRF token.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Assets change with the binary: revalidate rather than cache forever.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

pub(crate) fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `text` safe inside HTML text and double-quoted attributes.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The longest return path kept (longer ones are not pages of the console anyway).
const MAX_NEXT: usize = 2048;

/// A local path to return to after signing in: `/…` only, never `//host` or a backslash trick
/// (which browsers read as another site), and percent-encoded the way a browser would read it
/// (so that the `Location` header is always valid and holds no raw markup).
pub(crate) fn safe_next(next: Option<&str>) -> String {
    const BASE: &str = "http://ferry.invalid/";
    let Some(n) = next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\')) else {
        return "/".into();
    };
    if n.chars().any(char::is_control) {
        return "/".into();
    }
    match url::Url::parse(BASE).and_then(|base| base.join(n)) {
        // Dot segments can turn `/.//host` into the path `//host`: not a local path either.
        Ok(url) if url.as_str().starts_with(BASE) && !url.path().starts_with("//") => {
            let mut local = url.path().to_string();
            if let Some(query) = url.query() {
                local.push('?');
                local.push_str(query);
            }
            // It rides in the sign-in's state cookie, which must stay under a browser's 4 kB.
            if local.len() > MAX_NEXT { "/".into() } else { local }
        }
        _ => "/".into(),
    }
}

#[derive(Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
    expired: Option<String>,
    signed_out: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(safe_next(Some("/promotions/p-1?x=1")), "/promotions/p-1?x=1");
        for hostile in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "/\n",
            "/.//evil.example",
            "/\t/evil.example",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/", "{hostile:?}");
        }
        assert_eq!(safe_next(Some("/é?q=\"<x>")), "/%C3%A9?q=%22%3Cx%3E", "encoded as a browser would");
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(MAX_NEXT)))), "/", "too long for the state cookie");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape_html(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
