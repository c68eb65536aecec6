//! `/v1/auth/…`: sign-up, email verification, login and logout, the
//! session, password reset and change. Sign-up, login and the reset
//! request are limited per client IP and answer the same for known and
//! unknown emails.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use modelroute_identity::{Membership, OAuthProvider, User};
use modelroute_types::{Code, time};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::body::Body;
use crate::query;
use crate::session::{DEVICE_COOKIE, SESSION_COOKIE, SignedIn, actor, check_sign_in_origin, cookie, set_cookie};
use crate::state::State;

/// A device cookie lives a year.
const DEVICE_COOKIE_SECS: i64 = 365 * 24 * 3600;

/// The per-IP limit of the auth endpoints.
async fn limit_ip(state: &State, req: &HttpRequest) -> Result<(), ApiError> {
    let ip = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    crate::auth::check_limit(state, &format!("auth-ip:{ip}"), state.per_ip_auth_per_minute, "this address").await?;
    Ok(())
}

fn user_json(user: &User) -> Value {
    json!({
        "object": "user",
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "email_verified": user.email_verified_at.is_some(),
        "created_at": time::rfc3339(user.created_at),
    })
}

pub(crate) fn membership_json(m: &Membership) -> Value {
    json!({ "object": "organization", "id": m.org.id, "name": m.org.name, "role": m.role })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignUp {
    email: String,
    password: String,
    #[serde(default)]
    name: String,
}

/// `POST /v1/auth/signup`: 202 whether or not the address has an account.
pub(crate) async fn sign_up(state: State, req: HttpRequest, payload: Body) -> Result<HttpResponse, ApiError> {
    check_sign_in_origin(&state, &req)?;
    limit_ip(&state, &req).await?;
    let b: SignUp = payload.json().await?;
    state.services.identity.sign_up(&b.email, &b.password, &b.name, &actor("anonymous", &req)).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "status": "verification_sent",
        "message": "if this address can be used, a verification link is on its way to it",
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    token: String,
}

/// `POST /v1/auth/verify-email`.
pub(crate) async fn verify_email(state: State, req: HttpRequest, payload: Body) -> Result<HttpResponse, ApiError> {
    limit_ip(&state, &req).await?;
    let b: TokenBody = payload.json().await?;
    let user = state.services.identity.verify_email(&b.token, &actor("anonymous", &req)).await?;
    Ok(HttpResponse::Ok().json(user_json(&user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

/// `POST /v1/auth/login`: sets the session and device cookies and answers
/// the CSRF token.
pub(crate) async fn login(state: State, req: HttpRequest, payload: Body) -> Result<HttpResponse, ApiError> {
    check_sign_in_origin(&state, &req)?;
    limit_ip(&state, &req).await?;
    let b: Credentials = payload.json().await?;
    let device = cookie(&req, DEVICE_COOKIE);
    let login = match state
        .services
        .identity
        .login(&b.email, &b.password, device.as_deref(), &actor("anonymous", &req))
        .await
    {
        Err(e @ modelroute_identity::IdentityError::LoginLocked { retry_after_secs }) => {
            return Err(ApiError::from(e).with_header("retry-after", retry_after_secs.to_string()));
        }
        other => other?,
    };
    let memberships = state.services.identity.memberships(&login.user.id).await?;
    let max_age = (login.session.expires_at - time::now()).num_seconds();
    Ok(HttpResponse::Ok()
        .append_header(("set-cookie", set_cookie(SESSION_COOKIE, &login.session.token, max_age)))
        .append_header(("set-cookie", set_cookie(DEVICE_COOKIE, &login.device, DEVICE_COOKIE_SECS)))
        .insert_header(("cache-control", "no-store"))
        .json(json!({
            "object": "session",
            "user": user_json(&login.user),
            "organizations": memberships.iter().map(membership_json).collect::<Vec<_>>(),
            "csrf_token": login.session.csrf_token,
            "expires_at": time::rfc3339(login.session.expires_at),
        })))
}

/// `GET /v1/auth/session`: who is signed in, their orgs, the CSRF token.
pub(crate) async fn session(state: State, signed_in: SignedIn) -> Result<HttpResponse, ApiError> {
    let s = signed_in.0;
    let user = state.services.identity.user(&s.user_id).await?;
    let memberships = state.services.identity.memberships(&s.user_id).await?;
    Ok(HttpResponse::Ok().insert_header(("cache-control", "no-store")).json(json!({
        "object": "session",
        "user": user_json(&user),
        "organizations": memberships.iter().map(membership_json).collect::<Vec<_>>(),
        "csrf_token": state.services.identity.csrf_token(&s.id),
        "expires_at": time::rfc3339(s.expires_at),
    })))
}

fn clear_session_cookie() -> String {
    set_cookie(SESSION_COOKIE, "", 0)
}

/// `POST /v1/auth/logout`.
pub(crate) async fn logout(state: State, req: HttpRequest, signed_in: SignedIn) -> Result<HttpResponse, ApiError> {
    let s = signed_in.0;
    state.services.identity.end_session(&s, &actor(s.user_id.as_str(), &req)).await?;
    Ok(HttpResponse::NoContent().append_header(("set-cookie", clear_session_cookie())).finish())
}

/// `POST /v1/auth/logout-all`: ends every session of the user.
pub(crate) async fn logout_all(state: State, req: HttpRequest, signed_in: SignedIn) -> Result<HttpResponse, ApiError> {
    let s = signed_in.0;
    state.services.identity.end_all_sessions(&s.user_id, &actor(s.user_id.as_str(), &req)).await?;
    Ok(HttpResponse::NoContent().append_header(("set-cookie", clear_session_cookie())).finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetRequest {
    email: String,
}

/// `POST /v1/auth/password-reset`: 202 whether or not the address has an
/// account.
pub(crate) async fn request_reset(state: State, req: HttpRequest, payload: Body) -> Result<HttpResponse, ApiError> {
    limit_ip(&state, &req).await?;
    let b: ResetRequest = payload.json().await?;
    state.services.identity.request_password_reset(&b.email, &actor("anonymous", &req))?;
    Ok(HttpResponse::Accepted().json(json!({
        "status": "reset_sent",
        "message": "if this address has an account, a reset link is on its way to it",
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetConfirm {
    token: String,
    password: String,
}

/// `POST /v1/auth/password-reset/confirm`: sets the new password and ends
/// every session.
pub(crate) async fn confirm_reset(state: State, req: HttpRequest, payload: Body) -> Result<HttpResponse, ApiError> {
    limit_ip(&state, &req).await?;
    let b: ResetConfirm = payload.json().await?;
    state.services.identity.reset_password(&b.token, &b.password, &actor("anonymous", &req)).await?;
    Ok(HttpResponse::NoContent().append_header(("set-cookie", clear_session_cookie())).finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    current_password: String,
    password: String,
}

/// `POST /v1/auth/password`: changes the password; other sessions end.
pub(crate) async fn change_password(
    state: State,
    req: HttpRequest,
    signed_in: SignedIn,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let s = signed_in.0;
    let b: PasswordChange = payload.json().await?;
    state
        .services
        .identity
        .change_password(&s.user_id, &s.id, &b.current_password, &b.password, &actor(s.user_id.as_str(), &req))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The cookie that ties an OAuth callback to the browser that started it.
/// `SameSite=Lax`: the callback is a top-level navigation from the
/// provider's site, which a `Strict` cookie would not accompany.
const OAUTH_COOKIE: &str = "__Host-mr_oauth";

fn oauth_provider(name: &str) -> Result<OAuthProvider, ApiError> {
    OAuthProvider::parse(name)
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("no sign-in provider `{name}`: use google or github")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartQuery {
    redirect_to: Option<String>,
}

/// `GET /v1/auth/oauth/{provider}/start?redirect_to=/path`: redirects the
/// browser to the provider.
pub(crate) async fn oauth_start(
    state: State,
    req: HttpRequest,
    provider: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    limit_ip(&state, &req).await?;
    let provider = oauth_provider(&provider)?;
    let q: StartQuery = query::parse(&req)?;
    let start = state.services.identity.oauth_start(provider, q.redirect_to.as_deref()).await?;
    Ok(HttpResponse::Found()
        .insert_header(("location", start.authorize_url))
        .insert_header(("cache-control", "no-store"))
        .append_header((
            "set-cookie",
            format!("{OAUTH_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600", start.state),
        ))
        .finish())
}

/// `GET /v1/auth/oauth/{provider}/callback?code=…&state=…`: signs in and
/// redirects to where the flow started, with the session cookie.
pub(crate) async fn oauth_callback(
    state: State,
    req: HttpRequest,
    provider: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    limit_ip(&state, &req).await?;
    let provider = oauth_provider(&provider)?;
    // Providers add parameters of their own (Google: scope, authuser, prompt…).
    let q: HashMap<String, String> = query::parse(&req)?;
    if let Some(error) = q.get("error") {
        return Err(ApiError::new(Code::Unauthenticated, format!("the provider did not sign you in ({error})")));
    }
    let param = |k: &'static str| {
        q.get(k).map(String::as_str).ok_or_else(|| ApiError::invalid_param(k, format!("{k} is missing")))
    };
    let browser_state = cookie(&req, OAUTH_COOKIE);
    let done = state
        .services
        .identity
        .oauth_finish(provider, param("state")?, browser_state.as_deref(), param("code")?, &actor("anonymous", &req))
        .await?;
    let max_age = (done.login.session.expires_at - time::now()).num_seconds();
    Ok(HttpResponse::Found()
        .insert_header(("location", done.redirect_to))
        .insert_header(("cache-control", "no-store"))
        .append_header(("set-cookie", set_cookie(SESSION_COOKIE, &done.login.session.token, max_age)))
        .append_header(("set-cookie", set_cookie(DEVICE_COOKIE, &done.login.device, DEVICE_COOKIE_SECS)))
        .append_header(("set-cookie", format!("{OAUTH_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")))
        .finish())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeletionRequest {
    #[serde(default)]
    password: Option<String>,
}

/// `POST /v1/auth/account/deletion` `{"password"}`: the signed-in user asks
/// to be deleted. Every session ends now; the account is erased after
/// `[privacy] account_deletion_days` unless they sign in and cancel (202).
pub(crate) async fn request_deletion(
    state: State,
    req: HttpRequest,
    signed_in: SignedIn,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let s = signed_in.0;
    let b: DeletionRequest = payload.json_or_default().await?;
    let days = i64::try_from(state.services.privacy_config.account_deletion_days).unwrap_or(30);
    let at = state
        .services
        .identity
        .request_deletion(
            &s.user_id,
            b.password.as_deref(),
            chrono::Duration::days(days),
            &actor(s.user_id.as_str(), &req),
        )
        .await?;
    Ok(HttpResponse::Accepted().json(json!({
        "object": "account_deletion",
        "status": "pending",
        "erase_after": time::rfc3339(at),
        "cancel": "sign in again and DELETE /v1/auth/account/deletion before then",
    })))
}

/// `DELETE /v1/auth/account/deletion`: cancels a pending deletion.
pub(crate) async fn cancel_deletion(
    state: State,
    req: HttpRequest,
    signed_in: SignedIn,
) -> Result<HttpResponse, ApiError> {
    let s = signed_in.0;
    state.services.identity.cancel_deletion(&s.user_id, &actor(s.user_id.as_str(), &req)).await?;
    Ok(HttpResponse::Ok().json(json!({ "object": "account_deletion", "status": "cancelled" })))
}
