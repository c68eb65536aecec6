//! Browser sessions over HTTP: the cookies, the CSRF and origin checks, and
//! the [`SignedIn`] extractor for endpoints that need a user rather than an
//! org (`/v1/auth/…`, `/v1/orgs`).
//!
//! Cookies: `__Host-mr_session` (the session token) and `__Host-mr_device`
//! (exempts this browser from the brute-force lock), both `Secure;
//! HttpOnly; SameSite=Strict; Path=/` with no `Domain` — what the
//! `__Host-` prefix requires.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::{FromRequest, HttpMessage as _, HttpRequest};
use modelroute_identity::{Actor, Session};
use modelroute_types::Code;

use crate::ApiError;
use crate::request_id::RequestId;
use crate::state::State;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "__Host-mr_session";
/// The device cookie's name.
pub(crate) const DEVICE_COOKIE: &str = "__Host-mr_device";
/// The header that carries the CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// `scheme://host[:port]` of a URL (what an `Origin` header holds).
pub(crate) fn origin_of(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
        }
        None => url.to_ascii_lowercase(),
    }
}

/// A cookie's value from the request.
pub(crate) fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.cookie(name).map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value for one of our `__Host-` cookies.
pub(crate) fn set_cookie(name: &str, value: &str, max_age_secs: i64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}", max_age_secs.max(0))
}

/// Who is acting, for the audit log: `who`, the client's address (the TCP
/// peer; a proxy's forwarding headers are not trusted), its user agent and
/// the request id.
pub(crate) fn actor(who: &str, req: &HttpRequest) -> Actor {
    Actor {
        who: who.to_owned(),
        ip: req.peer_addr().map(|a| a.ip().to_string()),
        user_agent: req.headers().get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    }
}

/// Whether the method changes state (needs the CSRF token).
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The CSRF defence for a cookie-authenticated write: the request must
/// come from the public origin (`Origin`, or `Referer` when a browser sends
/// no `Origin`) and carry the session's CSRF token.
/// The origin a request says it comes from: its `Origin`, or without one
/// the origin of its `Referer`.
fn request_origin(req: &HttpRequest) -> Option<String> {
    let headers = req.headers();
    headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(origin_of)
        .or_else(|| headers.get("referer").and_then(|v| v.to_str().ok()).map(origin_of))
}

/// Login CSRF: a request that signs a browser in (login, sign-up) must not
/// come from another site, or a cross-site form could sign the victim into
/// the attacker's account. A request with neither `Origin` nor `Referer`
/// comes from a program, not a browser page, and passes.
///
/// # Errors
/// [`Code::CsrfFailed`] naming the origin that was expected.
pub(crate) fn check_sign_in_origin(state: &State, req: &HttpRequest) -> Result<(), ApiError> {
    match request_origin(req) {
        Some(origin) if origin != state.public_origin => {
            Err(ApiError::new(Code::CsrfFailed, format!("signing in is only possible from {}", state.public_origin)))
        }
        _ => Ok(()),
    }
}

pub(crate) fn check_csrf(state: &State, req: &HttpRequest, session: &Session) -> Result<(), ApiError> {
    if !is_write(req.method()) {
        return Ok(());
    }
    let headers = req.headers();
    if request_origin(req).as_deref() != Some(state.public_origin.as_str()) {
        return Err(ApiError::new(
            Code::CsrfFailed,
            format!("a signed-in browser request must come from {} (Origin or Referer)", state.public_origin),
        ));
    }
    let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !state.services.identity.csrf_valid(&session.id, token) {
        return Err(ApiError::new(Code::CsrfFailed, "missing or invalid X-CSRF-Token header"));
    }
    Ok(())
}

/// The signed-in user of a request with a session cookie (CSRF-checked
/// for writes).
#[derive(Debug, Clone)]
pub(crate) struct SignedIn(pub(crate) Session);

/// Reads and checks the session of a request.
pub(crate) fn signed_in(req: &HttpRequest) -> impl Future<Output = Result<SignedIn, ApiError>> + 'static {
    let state = req.app_data::<State>().cloned();
    let token = cookie(req, SESSION_COOKIE);
    let req = req.clone();
    async move {
        let state = state.ok_or_else(|| ApiError::new(Code::Internal, "application state missing"))?;
        let token = token.ok_or_else(|| ApiError::new(Code::Unauthenticated, "not signed in"))?;
        let session = state.services.identity.session(&token).await?;
        check_csrf(&state, &req, &session)?;
        Ok(SignedIn(session))
    }
}

impl FromRequest for SignedIn {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(signed_in(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(origin_of("https://App.Example.com/login?x=1"), "https://app.example.com");
        assert_eq!(origin_of("http://localhost:8080/"), "http://localhost:8080");
        assert_ne!(origin_of("https://example.com.evil.io"), origin_of("https://example.com"));
        assert_eq!(
            set_cookie(SESSION_COOKIE, "t", 60),
            "__Host-mr_session=t; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=60"
        );
    }
}
