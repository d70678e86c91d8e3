//! Console sessions: a cookie holding who signed in, until when, and the session's CSRF token,
//! sealed with HMAC-SHA256 under the session key. Nothing is stored server-side, so every
//! instance that shares the key (`identity.session_key_env` / `_arn`) accepts it — the API
//! function on AWS as well as `ferry serve`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::identity::{Caller, Channel};
use crate::intake::verify::secrets_equal;

/// The session cookie.
pub const SESSION_COOKIE: &str = "ferry_session";
/// The header the console's state-changing requests carry the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-ferry-csrf";
/// Least length of `identity.session_key`: HMAC-SHA256 keys shorter than this are guessable.
pub const MIN_SESSION_KEY_CHARS: usize = 32;
/// Browsers keep cookies up to 4096 bytes; a sealed session must fit with its attributes.
const MAX_COOKIE_VALUE: usize = 3800;

/// Who signed in to the console, until when, and the token their forms must echo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// How they proved it: `oidc` or `user-token`.
    pub via: String,
    /// Unix seconds.
    pub exp: i64,
    pub csrf: String,
}

impl Session {
    pub fn caller(&self) -> Caller {
        Caller {
            subject: Some(self.sub.clone()),
            display: self.name.clone(),
            groups: self.groups.clone(),
            channel: if self.via == Channel::Oidc.as_str() { Channel::Oidc } else { Channel::UserToken },
        }
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && secrets_equal(presented.as_bytes(), self.csrf.as_bytes())
    }
}

/// Why a request's session was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("not signed in")]
    Missing,
    #[error("the session cookie is not one this Ferry issued (or its session key changed): sign in again")]
    Invalid,
    #[error("your console session expired: sign in again")]
    Expired,
    /// A site sharing a parent domain can add a cookie of the same name (cookie tossing); which
    /// one is Ferry's own cannot be told, so neither counts.
    #[error(
        "the request carries two ferry_session cookies (one may come from another site on a parent domain): \
         clear this site's cookies and sign in again"
    )]
    Ambiguous,
}

/// Seals and opens cookies under one key.
pub struct Sessions {
    key: Vec<u8>,
    ttl_s: i64,
}

impl Sessions {
    /// `key` from the configuration; without one a random key, so sessions end when this process
    /// does (and are not shared between instances).
    pub fn new(key: Option<&[u8]>, ttl_s: u64) -> Self {
        let key = match key {
            Some(key) => key.to_vec(),
            None => random_bytes::<32>().to_vec(),
        };
        Sessions { key, ttl_s: ttl_s.min(i64::MAX as u64) as i64 }
    }

    pub fn ttl_s(&self) -> i64 {
        self.ttl_s
    }

    /// A new session for `caller` (a verified identity), and its cookie value.
    pub fn start(&self, caller: &Caller) -> Result<(Session, String), String> {
        let sub = caller.subject.clone().ok_or("an identity without a subject cannot sign in")?;
        let session = Session {
            sub,
            name: caller.display.clone(),
            groups: caller.groups.clone(),
            via: caller.channel.as_str().into(),
            exp: now_s().saturating_add(self.ttl_s),
            csrf: hex::encode(random_bytes::<24>()),
        };
        let sealed = self.seal("session", &session);
        if sealed.len() > MAX_COOKIE_VALUE {
            return Err(format!(
                "the session would not fit in a cookie ({} groups): grant roles by subject, or have the \
                 identity provider send fewer groups",
                session.groups.len()
            ));
        }
        Ok((session, sealed))
    }

    /// The session of a request, from its cookie.
    pub fn session(&self, headers: &HeaderMap) -> Result<Session, SessionError> {
        let value = cookie(headers, SESSION_COOKIE).ok_or(SessionError::Missing)?;
        if cookies(headers, SESSION_COOKIE).nth(1).is_some() {
            return Err(SessionError::Ambiguous);
        }
        let session: Session = self.open("session", &value).ok_or(SessionError::Invalid)?;
        if session.exp <= now_s() {
            return Err(SessionError::Expired);
        }
        Ok(session)
    }

    /// `value` as JSON, base64url, with an HMAC over it and `purpose` (so a value sealed for one
    /// cookie is never accepted as another).
    pub fn seal<T: Serialize>(&self, purpose: &str, value: &T) -> String {
        let body = b64(&serde_json::to_vec(value).expect("serializable"));
        let tag = b64(&self.mac(purpose, &body));
        format!("{body}.{tag}")
    }

    pub fn open<T: DeserializeOwned>(&self, purpose: &str, sealed: &str) -> Option<T> {
        let (body, tag) = sealed.split_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag).ok()?;
        if !secrets_equal(&tag, &self.mac(purpose, body)) {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).ok()?;
        serde_json::from_slice(&json).ok()
    }

    fn mac(&self, purpose: &str, body: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// How cookies are set for one request: `Secure` unless the console is reached over plain HTTP
/// on a loopback address (a browser does not send Secure cookies over http://).
#[derive(Debug, Clone, Copy)]
pub struct CookiePolicy {
    pub secure: bool,
}

impl CookiePolicy {
    /// From `server.public_url` when set (https → Secure), else from the request's Host.
    pub fn for_request(public_url: Option<&str>, headers: &HeaderMap) -> Self {
        let secure = match public_url {
            Some(url) => !url.starts_with("http://"),
            None => !host(headers).is_some_and(|h| is_loopback_host(&h)),
        };
        CookiePolicy { secure }
    }

    /// `Set-Cookie` for `name=value` on `path`, HttpOnly, SameSite=Lax (a link from a Teams
    /// message must open the console signed in; Lax still keeps cross-site POSTs without it).
    pub fn set(&self, name: &str, value: &str, path: &str, max_age_s: i64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text = format!("{name}={value}; Path={path}; Max-Age={max_age_s}; HttpOnly; SameSite=Lax{secure}");
        HeaderValue::from_str(&text).expect("cookie values are base64url and hex")
    }

    pub fn clear(&self, name: &str, path: &str) -> HeaderValue {
        self.set(name, "", path, 0)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (the first, if several).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    cookies(headers, name).next().map(str::to_string)
}

/// Every value of cookie `name` in the request's `Cookie` headers.
fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The request's Host, without its port.
pub fn host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(axum::http::header::HOST)?.to_str().ok()?;
    let url = url::Url::parse(&format!("http://{host}")).ok()?;
    url.host_str().map(str::to_string)
}

fn is_loopback_host(host: &str) -> bool {
    url::Url::parse(&format!("http://{host}")).is_ok_and(|u| crate::deploy::azure::is_loopback(&u))
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator works");
    bytes
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            subject: Some("alice@idp".into()),
            display: Some("Alice".into()),
            groups: vec!["release".into()],
            channel: Channel::Oidc,
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", format!("other=1; {SESSION_COOKIE}={value}").parse().unwrap());
        headers
    }

    #[test]
    fn a_sealed_session_opens_only_under_its_key_and_purpose() {
        let sessions = Sessions::new(Some(b"k1"), 60);
        let (session, sealed) = sessions.start(&caller()).unwrap();
        let opened = sessions.session(&with_cookie(&sealed)).unwrap();
        assert_eq!((opened.sub.as_str(), opened.csrf.as_str()), ("alice@idp", session.csrf.as_str()));
        assert_eq!(opened.caller().channel, Channel::Oidc);
        assert_eq!(Sessions::new(Some(b"k2"), 60).session(&with_cookie(&sealed)).unwrap_err(), SessionError::Invalid);
        assert!(sessions.open::<Session>("oidc-login", &sealed).is_none(), "sealed for another purpose");
        // A changed body with the old tag.
        let (body, tag) = sealed.split_once('.').unwrap();
        let mut forged: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        forged["sub"] = "mallory@idp".into();
        let forged = format!("{}.{tag}", b64(&serde_json::to_vec(&forged).unwrap()));
        assert_eq!(sessions.session(&with_cookie(&forged)).unwrap_err(), SessionError::Invalid);
        assert_eq!(sessions.session(&HeaderMap::new()).unwrap_err(), SessionError::Missing);
    }

    #[test]
    fn two_session_cookies_are_refused_whichever_comes_first() {
        let sessions = Sessions::new(Some(b"k"), 60);
        let (_, sealed) = sessions.start(&caller()).unwrap();
        for both in [
            format!("{SESSION_COOKIE}={sealed}; {SESSION_COOKIE}=e30.AAAA"),
            format!("{SESSION_COOKIE}=e30.AAAA; {SESSION_COOKIE}={sealed}"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("cookie", both.parse().unwrap());
            assert_eq!(sessions.session(&headers).unwrap_err(), SessionError::Ambiguous, "{both}");
        }
        // Also across two Cookie headers.
        let mut headers = with_cookie(&sealed);
        headers.append("cookie", format!("{SESSION_COOKIE}={sealed}").parse().unwrap());
        assert_eq!(sessions.session(&headers).unwrap_err(), SessionError::Ambiguous);
    }

    #[test]
    fn an_expired_session_is_refused_as_expired() {
        let sessions = Sessions::new(Some(b"k"), 0);
        let (_, sealed) = sessions.start(&caller()).unwrap();
        assert_eq!(sessions.session(&with_cookie(&sealed)).unwrap_err(), SessionError::Expired);
    }

    #[test]
    fn cookies_are_secure_except_plain_http_on_loopback() {
        let host = |h: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("host", h.parse().unwrap());
            headers
        };
        assert!(!CookiePolicy::for_request(None, &host("127.0.0.1:8080")).secure);
        assert!(!CookiePolicy::for_request(None, &host("localhost")).secure);
        assert!(!CookiePolicy::for_request(None, &host("[::1]:80")).secure);
        assert!(CookiePolicy::for_request(None, &host("ferry.example.com")).secure);
        assert!(CookiePolicy::for_request(Some("https://ferry.example.com"), &host("127.0.0.1")).secure);
        assert!(!CookiePolicy::for_request(Some("http://127.0.0.1:8080"), &host("127.0.0.1")).secure);
        let set = CookiePolicy { secure: true }.set(SESSION_COOKIE, "v", "/", 60);
        assert_eq!(set.to_str().unwrap(), "ferry_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure");
    }

    #[test]
    fn csrf_tokens_are_compared_whole() {
        let (session, _) = Sessions::new(None, 60).start(&caller()).unwrap();
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[..10]));
    }
}
