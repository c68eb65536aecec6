//! Sign-in with Google (OpenID Connect) and GitHub (OAuth 2 plus its user
//! API), both with `state` and PKCE (S256).
//!
//! [`Identity::oauth_start`] records a flow (the state's hash, the PKCE
//! verifier, a nonce, where to go after) and answers the provider's
//! authorization URL; the browser also keeps the state in a cookie, so a
//! callback only completes in the browser that started it.
//! [`Identity::oauth_finish`] uses the flow up (once, within ten minutes),
//! redeems the code with the verifier, and learns who signed in:
//! - Google: the `id_token`'s RS256 signature against the provider's JWKS
//!   (found by discovery), then `iss`, `aud` (and `azp`), `exp`, `iat` and
//!   `nonce`;
//! - GitHub: `GET /user` and `GET /user/emails` (the primary, verified one).
//!
//! Users are keyed by (issuer, subject). A new identity is linked to an
//! existing account only through an email the provider says is verified;
//! if that account's own address was never verified, its password is
//! cleared and its sessions end (someone else may have signed up with it).

use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelroute_db::schema::{oauth_flows, sessions, user_identities, users};
use modelroute_db::{db_run, db_transaction};
use modelroute_types::{UserId, time};
use serde_json::Value;

use crate::accounts::{Login, UserRow, normalize_email};
use crate::audit::Actor;
use crate::secret::{new_token, token_hash};
use crate::{Identity, IdentityError, OAuthConfig};

/// A flow must finish within this.
const FLOW_MINUTES: i64 = 10;
/// Clock skew allowed on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;
/// Discovery documents and keys are re-read after this.
const METADATA_TTL: StdDuration = StdDuration::from_secs(3600);
/// Every call to a provider ends within this.
const PROVIDER_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// The issuer GitHub identities are stored under.
const GITHUB_ISSUER: &str = "https://github.com";

/// A sign-in provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OAuthProvider {
    /// Google, through OpenID Connect.
    Google,
    /// GitHub, through OAuth 2 and its REST API.
    GitHub,
}

impl OAuthProvider {
    /// The name in paths and config: `google`, `github`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Google => "google",
            Self::GitHub => "github",
        }
    }

    /// The provider named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "google" => Some(Self::Google),
            "github" => Some(Self::GitHub),
            _ => None,
        }
    }
}

/// Where to send the browser to sign in, and the state for its cookie.
#[derive(Debug)]
pub struct OAuthStart {
    /// The provider's authorization URL with every parameter.
    pub authorize_url: String,
    /// The flow's state: the browser keeps it in a cookie for the callback.
    pub state: String,
}

/// A finished sign-in: the session, and where the browser goes next.
#[derive(Debug)]
pub struct OAuthLogin {
    /// The session and user.
    pub login: Login,
    /// The relative path the flow was started for.
    pub redirect_to: String,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// OpenID metadata read by discovery.
#[derive(Clone, Debug)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The providers' HTTP client and cached metadata.
pub(crate) struct OAuthClients {
    config: OAuthConfig,
    http: Option<HttpsClient>,
    discovery: Mutex<Option<(Instant, Discovery)>>,
    jwks: Mutex<Option<(Instant, Value)>>,
}

impl std::fmt::Debug for OAuthClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClients")
            .field("google", &!self.config.google.client_id.is_empty())
            .field("github", &!self.config.github.client_id.is_empty())
            .finish_non_exhaustive()
    }
}

impl OAuthClients {
    pub(crate) fn new(config: &OAuthConfig) -> Self {
        let http = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .ok()
            .map(|b| Client::builder(TokioExecutor::new()).build(b.https_or_http().enable_http1().build()));
        Self { config: config.clone(), http, discovery: Mutex::default(), jwks: Mutex::default() }
    }

    fn enabled(&self, p: OAuthProvider) -> bool {
        match p {
            OAuthProvider::Google => !self.config.google.client_id.is_empty(),
            OAuthProvider::GitHub => !self.config.github.client_id.is_empty(),
        }
    }

    async fn call(&self, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Value), IdentityError> {
        let http = self.http.as_ref().ok_or_else(|| IdentityError::OAuthProvider("no TLS client".into()))?;
        let fail = |e: String| IdentityError::OAuthProvider(e);
        let res = tokio::time::timeout(PROVIDER_TIMEOUT, http.request(req))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(format!("{e}")))?;
        let status = res.status().as_u16();
        let body = tokio::time::timeout(PROVIDER_TIMEOUT, res.into_body().collect())
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(format!("{e}")))?
            .to_bytes();
        let json = serde_json::from_slice(&body).map_err(|_| fail(format!("a non-JSON answer (HTTP {status})")))?;
        Ok((status, json))
    }

    async fn get_json(&self, url: &str, bearer: Option<&str>) -> Result<Value, IdentityError> {
        let mut req = hyper::Request::get(url).header("accept", "application/json").header("user-agent", "ModelRoute");
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| IdentityError::OAuthProvider(e.to_string()))?;
        let (status, json) = self.call(req).await?;
        if status != 200 {
            return Err(IdentityError::OAuthProvider(format!("GET {url}: HTTP {status}")));
        }
        Ok(json)
    }

    async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<(u16, Value), IdentityError> {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let req = hyper::Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("user-agent", "ModelRoute")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| IdentityError::OAuthProvider(e.to_string()))?;
        self.call(req).await
    }

    async fn discovery(&self) -> Result<Discovery, IdentityError> {
        if let Some((at, d)) = self.discovery.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(d.clone());
        }
        let issuer = self.config.google.issuer.trim_end_matches('/');
        let doc = self.get_json(&format!("{issuer}/.well-known/openid-configuration"), None).await?;
        let field = |k: &str| {
            doc.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| IdentityError::OAuthProvider(format!("discovery document without `{k}`")))
        };
        let d = Discovery {
            issuer: field("issuer")?,
            authorization_endpoint: field("authorization_endpoint")?,
            token_endpoint: field("token_endpoint")?,
            jwks_uri: field("jwks_uri")?,
        };
        if d.issuer.trim_end_matches('/') != issuer {
            return Err(IdentityError::OAuthProvider("the discovery document names another issuer".into()));
        }
        *self.discovery.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), d.clone()));
        Ok(d)
    }

    /// The JWKS, re-read when stale or when it lacks `kid` (keys rotate).
    async fn jwks(&self, jwks_uri: &str, kid: &str) -> Result<Value, IdentityError> {
        let cached = self.jwks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some((at, keys)) = cached
            && at.elapsed() < METADATA_TTL
            && find_key(&keys, kid).is_some()
        {
            return Ok(keys);
        }
        let keys = self.get_json(jwks_uri, None).await?;
        *self.jwks.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), keys.clone()));
        Ok(keys)
    }
}

fn find_key<'a>(jwks: &'a Value, kid: &str) -> Option<&'a Value> {
    jwks.get("keys")?.as_array()?.iter().find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
}

fn refused(message: impl Into<String>) -> IdentityError {
    IdentityError::OAuth(message.into())
}

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUser {
    /// The issuer (`https://accounts.google.com`, `https://github.com`).
    pub issuer: String,
    /// The provider's stable user id.
    pub subject: String,
    /// The email, if the provider gave one.
    pub email: Option<String>,
    /// Whether the provider says it verified that email.
    pub email_verified: bool,
    /// A display name.
    pub name: String,
}

/// Checks an OpenID Connect `id_token`: RS256 signature under a key of
/// `jwks`, then issuer, audience (and `azp` when there are several),
/// expiry, issue time and nonce.
///
/// # Errors
/// [`IdentityError::OAuth`] naming the first check that failed.
pub fn verify_id_token(
    token: &str,
    jwks: &Value,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: NaiveDateTime,
) -> Result<ProviderUser, IdentityError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(refused("the id_token is not a JWS"));
    };
    let decode = |part: &str| B64.decode(part).map_err(|_| refused("the id_token is not base64url"));
    let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| refused("the id_token header is not JSON"))?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(refused("the id_token is not signed with RS256"));
    }
    let kid = header.get("kid").and_then(Value::as_str).unwrap_or_default();
    let key = find_key(jwks, kid).ok_or_else(|| refused("the id_token is signed with an unknown key"))?;
    let component = |k: &str| {
        key.get(k).and_then(Value::as_str).and_then(|v| B64.decode(v).ok()).ok_or_else(|| refused("a malformed JWK"))
    };
    let (n, e) = (component("n")?, component("e")?);
    let public = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
    let signing_input = format!("{h}.{p}");
    public
        .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, signing_input.as_bytes(), &decode(s)?)
        .map_err(|_| refused("the id_token signature does not verify"))?;
    let claims: Value = serde_json::from_slice(&decode(p)?).map_err(|_| refused("the id_token claims are not JSON"))?;
    let str_claim = |k: &str| claims.get(k).and_then(Value::as_str);
    if str_claim("iss").map(|i| i.trim_end_matches('/')) != Some(issuer.trim_end_matches('/')) {
        return Err(refused("the id_token comes from another issuer"));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !audiences.contains(&client_id) || (audiences.len() > 1 && str_claim("azp") != Some(client_id)) {
        return Err(refused("the id_token is meant for another client"));
    }
    let now = now.and_utc().timestamp();
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp + LEEWAY_SECS <= now {
        return Err(refused("the id_token has expired"));
    }
    if claims.get("iat").and_then(Value::as_i64).is_none_or(|iat| iat > now + LEEWAY_SECS) {
        return Err(refused("the id_token has no valid issue time"));
    }
    if str_claim("nonce") != Some(nonce) {
        return Err(refused("the id_token's nonce is not this sign-in's"));
    }
    let subject = str_claim("sub").filter(|s| !s.is_empty()).ok_or_else(|| refused("the id_token has no subject"))?;
    Ok(ProviderUser {
        issuer: issuer.trim_end_matches('/').to_owned(),
        subject: subject.to_owned(),
        email: str_claim("email").map(str::to_owned),
        email_verified: claims
            .get("email_verified")
            .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true")),
        name: str_claim("name").unwrap_or_default().to_owned(),
    })
}

/// A path on this site to return to after sign-in: relative, not `//host`.
/// Where the browser may land after signing in: a path on this site, and
/// nothing a browser could read as another host. It starts with exactly one
/// `/`, and every character is one a URL path or query carries literally
/// (RFC 3986 unreserved, sub-delims, `:@/?%`): no control characters (a
/// tab or newline is dropped by browsers, so `/\t/evil` reads as
/// `//evil`), no spaces, no backslash, no `#`. Anything else lands on `/`.
pub(crate) fn safe_redirect(to: Option<&str>) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c);
    match to {
        Some(p) if p.len() <= 500 && p.starts_with('/') && !p[1..].starts_with('/') && p.chars().all(allowed) => {
            p.to_owned()
        }
        _ => "/".into(),
    }
}

impl Identity {
    /// Whether sign-in with `provider` is configured.
    #[must_use]
    pub fn oauth_enabled(&self, provider: OAuthProvider) -> bool {
        self.oauth().enabled(provider)
    }

    fn redirect_uri(&self, provider: OAuthProvider) -> String {
        format!("{}/v1/auth/oauth/{}/callback", self.settings().public_url.trim_end_matches('/'), provider.as_str())
    }

    /// Starts a sign-in: records the flow and answers where to send the
    /// browser. `redirect_to` (a path on this site) is where it lands after.
    ///
    /// # Errors
    /// [`IdentityError::NotFound`] when the provider is not configured; a
    /// provider whose discovery fails.
    pub async fn oauth_start(
        &self,
        provider: OAuthProvider,
        redirect_to: Option<&str>,
    ) -> Result<OAuthStart, IdentityError> {
        if !self.oauth_enabled(provider) {
            return Err(IdentityError::NotFound("sign-in provider"));
        }
        let (state, verifier, nonce) = (new_token()?, new_token()?, new_token()?);
        let challenge = B64.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
        let now = time::now();
        let state_hash = token_hash(&state);
        let redirect = safe_redirect(redirect_to);
        db_run!(self.pool(), |conn| diesel::insert_into(oauth_flows::table)
            .values((
                oauth_flows::state_hash.eq(&state_hash),
                oauth_flows::provider.eq(provider.as_str()),
                oauth_flows::pkce_verifier.eq(&verifier),
                oauth_flows::nonce.eq(&nonce),
                oauth_flows::redirect_to.eq(&redirect),
                oauth_flows::created_at.eq(now),
                oauth_flows::expires_at.eq(now + Duration::minutes(FLOW_MINUTES)),
            ))
            .execute(conn)
            .await)?;
        let redirect_uri = self.redirect_uri(provider);
        let config = &self.oauth().config;
        let (endpoint, mut params) = match provider {
            OAuthProvider::Google => (
                self.oauth().discovery().await?.authorization_endpoint,
                vec![
                    ("client_id", config.google.client_id.as_str()),
                    ("scope", "openid email profile"),
                    ("nonce", nonce.as_str()),
                ],
            ),
            OAuthProvider::GitHub => (
                config.github.authorize_url.clone(),
                vec![("client_id", config.github.client_id.as_str()), ("scope", "read:user user:email")],
            ),
        };
        params.extend([
            ("response_type", "code"),
            ("redirect_uri", redirect_uri.as_str()),
            ("state", state.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]);
        let mut url = url::Url::parse(&endpoint)
            .map_err(|_| IdentityError::OAuthProvider("the authorization endpoint is not a URL".into()))?;
        url.query_pairs_mut().extend_pairs(params);
        Ok(OAuthStart { authorize_url: url.into(), state })
    }

    /// Finishes a sign-in at the callback: `state` from the query must be
    /// the one the browser's cookie holds (`browser_state`) and a flow
    /// started here, unused and under ten minutes old; the code is redeemed
    /// with the PKCE verifier; the identity is checked, linked or created,
    /// and a session opened.
    ///
    /// # Errors
    /// [`IdentityError::OAuth`] for anything that does not check out,
    /// [`IdentityError::OAuthProvider`] when the provider fails.
    pub async fn oauth_finish(
        &self,
        provider: OAuthProvider,
        state: &str,
        browser_state: Option<&str>,
        code: &str,
        actor: &Actor,
    ) -> Result<OAuthLogin, IdentityError> {
        if !self.oauth_enabled(provider) {
            return Err(IdentityError::NotFound("sign-in provider"));
        }
        // Compare the hashes: equal-length values, no early exit on a shared prefix.
        if browser_state.map(token_hash) != Some(token_hash(state)) {
            return Err(refused("this sign-in was not started in this browser (state mismatch)"));
        }
        let hash = token_hash(state);
        let now = time::now();
        let flow: Option<(String, String, String)> = db_run!(self.pool(), |conn| diesel::update(
            oauth_flows::table
                .filter(oauth_flows::state_hash.eq(&hash))
                .filter(oauth_flows::provider.eq(provider.as_str()))
                .filter(oauth_flows::used_at.is_null())
                .filter(oauth_flows::expires_at.gt(now))
        )
        .set(oauth_flows::used_at.eq(now))
        .returning((oauth_flows::pkce_verifier, oauth_flows::nonce, oauth_flows::redirect_to))
        .get_result(conn)
        .await
        .optional())?;
        let (verifier, nonce, redirect_to) =
            flow.ok_or_else(|| refused("this sign-in is unknown, already used or expired; start again"))?;
        let who = match provider {
            OAuthProvider::Google => self.google_user(code, &verifier, &nonce).await?,
            OAuthProvider::GitHub => self.github_user(code, &verifier).await?,
        };
        let login = self.oauth_sign_in(&who, actor).await?;
        // Checked again where it is used: a flow stored by an older version is held to today's rule.
        Ok(OAuthLogin { login, redirect_to: safe_redirect(Some(&redirect_to)) })
    }

    async fn redeem(&self, token_url: &str, form: &[(&str, &str)]) -> Result<Value, IdentityError> {
        let (status, body) = self.oauth().post_form(token_url, form).await?;
        if status != 200 || body.get("error").is_some() {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("unknown error");
            return Err(refused(format!("the provider refused the code ({error})")));
        }
        Ok(body)
    }

    async fn google_user(&self, code: &str, verifier: &str, nonce: &str) -> Result<ProviderUser, IdentityError> {
        let clients = self.oauth();
        let d = clients.discovery().await?;
        let google = &clients.config.google;
        let redirect_uri = self.redirect_uri(OAuthProvider::Google);
        let tokens = self
            .redeem(
                &d.token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &redirect_uri),
                    ("client_id", &google.client_id),
                    ("client_secret", google.client_secret.expose()),
                    ("code_verifier", verifier),
                ],
            )
            .await?;
        let id_token =
            tokens.get("id_token").and_then(Value::as_str).ok_or_else(|| refused("the provider sent no id_token"))?;
        let kid = id_token
            .split('.')
            .next()
            .and_then(|h| B64.decode(h).ok())
            .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
            .and_then(|h| h.get("kid").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let jwks = clients.jwks(&d.jwks_uri, &kid).await?;
        verify_id_token(id_token, &jwks, &d.issuer, &google.client_id, nonce, time::now())
    }

    async fn github_user(&self, code: &str, verifier: &str) -> Result<ProviderUser, IdentityError> {
        let clients = self.oauth();
        let github = &clients.config.github;
        let redirect_uri = self.redirect_uri(OAuthProvider::GitHub);
        let tokens = self
            .redeem(
                &github.token_url,
                &[
                    ("code", code),
                    ("redirect_uri", &redirect_uri),
                    ("client_id", &github.client_id),
                    ("client_secret", github.client_secret.expose()),
                    ("code_verifier", verifier),
                ],
            )
            .await?;
        let token = tokens
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("the provider sent no access token"))?;
        let api = github.api_url.trim_end_matches('/');
        let user = clients.get_json(&format!("{api}/user"), Some(token)).await?;
        let subject = user
            .get("id")
            .and_then(|i| i.as_i64().map(|n| n.to_string()).or_else(|| i.as_str().map(str::to_owned)))
            .ok_or_else(|| IdentityError::OAuthProvider("GET /user without an id".into()))?;
        let emails = clients.get_json(&format!("{api}/user/emails"), Some(token)).await?;
        let primary = emails.as_array().and_then(|list| {
            list.iter().find(|e| {
                e.get("primary").and_then(Value::as_bool) == Some(true)
                    && e.get("verified").and_then(Value::as_bool) == Some(true)
            })
        });
        let name = user.get("name").and_then(Value::as_str).or_else(|| user.get("login").and_then(Value::as_str));
        Ok(ProviderUser {
            issuer: GITHUB_ISSUER.into(),
            subject,
            email: primary.and_then(|e| e.get("email")).and_then(Value::as_str).map(str::to_owned),
            email_verified: primary.is_some(),
            name: name.unwrap_or_default().to_owned(),
        })
    }

    /// Signs in the user a provider vouched for: the linked account, or the
    /// account of the same verified email (linked now), or a new account.
    ///
    /// # Errors
    /// [`IdentityError::OAuth`] when there is no linked account and no
    /// verified email to link or create one by.
    pub async fn oauth_sign_in(&self, who: &ProviderUser, actor: &Actor) -> Result<Login, IdentityError> {
        let linked: Option<String> = db_run!(self.pool(), |conn| user_identities::table
            .find((&who.issuer, &who.subject))
            .select(user_identities::user_id)
            .first(conn)
            .await
            .optional())?;
        let user_id = match linked {
            Some(id) => id,
            None => self.link_or_create(who, actor).await?,
        };
        let user = self.user(&UserId::from_trusted(user_id)).await?;
        let session = self.create_session(&user.id, actor).await?;
        self.record_user_event(user.id.as_str(), None, actor, "user.login").await;
        let device = self.issue_device_cookie(&user.email)?;
        Ok(Login { user, session, device })
    }

    async fn link_or_create(&self, who: &ProviderUser, actor: &Actor) -> Result<String, IdentityError> {
        let email = who
            .email
            .as_deref()
            .filter(|_| who.email_verified)
            .ok_or_else(|| refused("the provider did not confirm an email address for this account"))?;
        let email = normalize_email(email)?;
        let now = time::now();
        let new_id = UserId::new().into_string();
        let (user_id, created): (String, bool) = db_transaction!(self.pool(), |conn| {
            let existing: Option<UserRow> = users::table
                .filter(users::email.eq(&email))
                .select(UserRow::as_select())
                .first(conn)
                .await
                .optional()?;
            let (user_id, created) = match existing {
                Some(u) => {
                    if u.email_verified_at.is_none() {
                        // Whoever set this account's password never proved the address: their
                        // password and sessions go; the provider's verified owner takes it.
                        diesel::update(users::table.find(&u.id))
                            .set((
                                users::password_hash.eq(None::<String>),
                                users::email_verified_at.eq(Some(now)),
                                users::updated_at.eq(now),
                            ))
                            .execute(conn)
                            .await?;
                        diesel::delete(sessions::table.filter(sessions::user_id.eq(&u.id))).execute(conn).await?;
                    }
                    (u.id, false)
                }
                None => {
                    diesel::insert_into(users::table)
                        .values(&UserRow {
                            id: new_id.clone(),
                            email: email.clone(),
                            // The provider's name, less what a name may not hold.
                            name: who
                                .name
                                .chars()
                                .filter(|c| !modelroute_types::text::forbidden_in_name(*c))
                                .take(200)
                                .collect(),
                            password_hash: None,
                            email_verified_at: Some(now),
                            created_at: now,
                            updated_at: now,
                        })
                        .execute(conn)
                        .await?;
                    (new_id.clone(), true)
                }
            };
            diesel::insert_into(user_identities::table)
                .values((
                    user_identities::issuer.eq(&who.issuer),
                    user_identities::subject.eq(&who.subject),
                    user_identities::user_id.eq(&user_id),
                    user_identities::email.eq(Some(&email)),
                    user_identities::created_at.eq(now),
                ))
                .execute(conn)
                .await?;
            Ok::<_, IdentityError>((user_id, created))
        })?;
        let action = if created { "user.signed_up" } else { "user.oauth_linked" };
        self.record_user_event(&user_id, None, actor, action).await;
        Ok(user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_redirect(Some("/settings?tab=keys")), "/settings?tab=keys");
        assert_eq!(safe_redirect(Some("/a/b-c_d~e?x=1&y=%2F")), "/a/b-c_d~e?x=1&y=%2F");
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil.example",
            "evil",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/\r\n/evil.example/",
            "/x\r\nSet-Cookie: a=b",
            "/\u{0}",
            "/ /evil.example",
            "/\u{202e}x",
            "/é",
            "/#x",
            "",
        ] {
            assert_eq!(safe_redirect(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_redirect(None), "/");
    }
}
