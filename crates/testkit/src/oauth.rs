//! Stand-ins for the OAuth providers: Google's OpenID Connect endpoints
//! (discovery, authorize, token, JWKS; `id_token`s really signed with RS256)
//! and GitHub's (authorize, `access_token`, `/user`, `/user/emails`). Both
//! check the client id and secret, the redirect URI and the PKCE verifier
//! (S256), and redeem a code once. Authorization approves at once as the
//! configured user; faults make the next `id_token` wrong in one way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The client id both stand-ins accept.
pub const CLIENT_ID: &str = "test-client-id";
/// The client secret both stand-ins accept.
pub const CLIENT_SECRET: &str = "test-client-secret";
/// The `kid` of the signing key.
const KID: &str = "testkit-rsa-1";

/// Which provider a stand-in plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Google (OpenID Connect).
    Google,
    /// GitHub (OAuth 2 and its API).
    GitHub,
}

/// The account the stand-in signs in as.
#[derive(Clone, Debug)]
pub struct Account {
    /// The provider's user id.
    pub subject: String,
    /// The email address.
    pub email: String,
    /// Whether the provider says it is verified.
    pub email_verified: bool,
    /// Display name.
    pub name: String,
}

/// A way to make the next `id_token` wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// A correct token.
    None,
    /// `aud` is another client.
    WrongAudience,
    /// `exp` is an hour ago.
    Expired,
    /// `nonce` is not the one the client sent.
    WrongNonce,
    /// `iss` is another issuer.
    WrongIssuer,
    /// The claims were changed after signing.
    Tampered,
}

struct Grant {
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    account: Account,
    used: bool,
}

struct State {
    account: Account,
    fault: TokenFault,
    grants: HashMap<String, Grant>,
    tokens: HashMap<String, Account>,
    counter: u64,
    token_requests: Vec<HashMap<String, String>>,
}

/// A running OAuth provider stand-in. It stops when dropped.
pub struct OAuthStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OAuthStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthStandIn").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for OAuthStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, body: &Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn redirect(to: &str) -> Reply {
    Response::builder().status(302).header("location", to).body(Full::new(Bytes::new())).expect("a valid response")
}

fn form(s: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

fn signing_key() -> ring::signature::RsaKeyPair {
    ring::signature::RsaKeyPair::from_der(include_bytes!("../data/oauth-rsa-2048.der")).expect("the test RSA key")
}

/// An RS256 JWS of `claims` under the stand-in's key.
fn sign(claims: &Value) -> String {
    let header = B64.encode(json!({ "alg": "RS256", "kid": KID, "typ": "JWT" }).to_string());
    let payload = B64.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let key = signing_key();
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), input.as_bytes(), &mut sig)
        .expect("signing");
    format!("{input}.{}", B64.encode(sig))
}

impl OAuthStandIn {
    /// Starts a stand-in on a free local port, signing in as `account`.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(provider: Provider, account: Account) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            account,
            fault: TokenFault::None,
            grants: HashMap::new(),
            tokens: HashMap::new(),
            counter: 0,
            token_requests: vec![],
        }));
        let shared = Arc::clone(&state);
        let base = format!("http://{addr}");
        let task = crate::listen::serve(listener, move |req| {
            let (state, base) = (Arc::clone(&shared), base.clone());
            async move { handle(provider, &base, &state, req).await }
        });
        Self { addr, state, task }
    }

    /// The base URL: Google's issuer; GitHub's web and API root.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs in as `account` from now on.
    pub fn sign_in_as(&self, account: Account) {
        self.state().account = account;
    }

    /// Makes the next `id_token`s wrong in this way.
    pub fn set_fault(&self, fault: TokenFault) {
        self.state().fault = fault;
    }

    /// The form of every token request received.
    #[must_use]
    pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.state().token_requests.clone()
    }
}

async fn handle(provider: Provider, base: &str, state: &Mutex<State>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let query = form(req.uri().query().unwrap_or_default());
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body = form(&String::from_utf8_lossy(&body));
    let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match (provider, path.as_str()) {
        (Provider::Google, "/.well-known/openid-configuration") => reply(
            200,
            &json!({
                "issuer": base,
                "authorization_endpoint": format!("{base}/o/oauth2/v2/auth"),
                "token_endpoint": format!("{base}/token"),
                "jwks_uri": format!("{base}/oauth2/v3/certs"),
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }),
        ),
        (Provider::Google, "/oauth2/v3/certs") => reply(
            200,
            &json!({ "keys": [{
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                "n": include_str!("../data/oauth-rsa-2048.n").trim(), "e": "AQAB",
            }]}),
        ),
        (Provider::Google, "/o/oauth2/v2/auth") | (Provider::GitHub, "/login/oauth/authorize") => authorize(&mut s, &query),
        (Provider::Google, "/token") => token(&mut s, &body, true).map_or_else(|e| reply(400, &json!({ "error": e })), |(account, nonce)| {
            let fault = s.fault;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let now = i64::try_from(now).unwrap_or_default();
            let mut claims = json!({
                "iss": if fault == TokenFault::WrongIssuer { "https://evil.example" } else { base },
                "aud": if fault == TokenFault::WrongAudience { "someone-else" } else { CLIENT_ID },
                "azp": CLIENT_ID,
                "sub": account.subject,
                "email": account.email,
                "email_verified": account.email_verified,
                "name": account.name,
                "nonce": if fault == TokenFault::WrongNonce { "another-nonce".to_owned() } else { nonce.unwrap_or_default() },
                "iat": now,
                "exp": if fault == TokenFault::Expired { now - 3600 } else { now + 3600 },
            });
            let mut id_token = sign(&claims);
            if fault == TokenFault::Tampered {
                if let Some(c) = claims.as_object_mut() {
                    c.insert("email".into(), json!("admin@example.com"));
                }
                let mut parts: Vec<String> = id_token.split('.').map(str::to_owned).collect();
                if let Some(p) = parts.get_mut(1) {
                    *p = B64.encode(claims.to_string());
                }
                id_token = parts.join(".");
            }
            let access = issue_access(&mut s, account);
            reply(200, &json!({ "access_token": access, "id_token": id_token, "token_type": "Bearer", "expires_in": 3599 }))
        }),
        (Provider::GitHub, "/login/oauth/access_token") => token(&mut s, &body, false).map_or_else(|e| reply(200, &json!({ "error": e })), |(account, _)| {
            let access = issue_access(&mut s, account);
            reply(200, &json!({ "access_token": access, "token_type": "bearer", "scope": "read:user,user:email" }))
        }),
        (Provider::GitHub, "/user" | "/user/emails") => {
            let Some(account) = bearer.and_then(|t| s.tokens.get(&t).cloned()) else {
                return reply(401, &json!({ "message": "Bad credentials" }));
            };
            if path == "/user" {
                let id: i64 = account.subject.parse().unwrap_or(1);
                reply(200, &json!({ "id": id, "login": account.name.to_lowercase().replace(' ', "-"), "name": account.name }))
            } else {
                reply(
                    200,
                    &json!([
                        { "email": format!("{}@users.noreply.github.com", account.subject), "primary": false, "verified": true, "visibility": null },
                        { "email": account.email, "primary": true, "verified": account.email_verified, "visibility": "private" },
                    ]),
                )
            }
        }
        _ => reply(404, &json!({ "error": "not_found" })),
    }
}

fn authorize(s: &mut State, q: &HashMap<String, String>) -> Reply {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID {
        return reply(400, &json!({ "error": "invalid_client" }));
    }
    if get("code_challenge").is_empty() || get("code_challenge_method") != "S256" {
        return reply(400, &json!({ "error": "invalid_request", "error_description": "PKCE S256 is required" }));
    }
    s.counter += 1;
    let code = format!("code-{}-{}", s.counter, get("state").chars().take(8).collect::<String>());
    let grant = Grant {
        redirect_uri: get("redirect_uri"),
        challenge: get("code_challenge"),
        nonce: q.get("nonce").cloned(),
        account: s.account.clone(),
        used: false,
    };
    s.grants.insert(code.clone(), grant);
    let mut to =
        url::Url::parse(&get("redirect_uri")).unwrap_or_else(|_| url::Url::parse("http://invalid/").expect("url"));
    to.query_pairs_mut().append_pair("code", &code).append_pair("state", &get("state"));
    redirect(to.as_str())
}

/// Redeems a code: the account and nonce, or the OAuth error code (GitHub
/// answers its errors with 200, as the real one does).
fn token(s: &mut State, f: &HashMap<String, String>, google: bool) -> Result<(Account, Option<String>), &'static str> {
    s.token_requests.push(f.clone());
    let error = Err;
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return error("invalid_client");
    }
    if google && get("grant_type") != "authorization_code" {
        return error("unsupported_grant_type");
    }
    let Some(grant) = s.grants.get_mut(&get("code")) else { return error("invalid_grant") };
    if grant.used || grant.redirect_uri != get("redirect_uri") {
        return error(if google { "invalid_grant" } else { "bad_verification_code" });
    }
    let verifier = get("code_verifier");
    let challenge = B64.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    if verifier.is_empty() || challenge != grant.challenge {
        return error("invalid_grant");
    }
    grant.used = true;
    Ok((grant.account.clone(), grant.nonce.clone()))
}

fn issue_access(s: &mut State, account: Account) -> String {
    s.counter += 1;
    let token = format!("access-{}", s.counter);
    s.tokens.insert(token.clone(), account);
    token
}
