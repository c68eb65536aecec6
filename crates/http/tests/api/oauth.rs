//! Sign-in with Google and GitHub, end to end: the real server on port 0,
//! the providers played by `modelroute-testkit` stand-ins that implement
//! their endpoints (discovery, JWKS and RS256-signed id_tokens for Google;
//! the user and emails API for GitHub) and enforce client secrets, redirect
//! URIs, PKCE and single-use codes. On SQLite and PostgreSQL.

use std::collections::HashMap;

use hyper::{Method, StatusCode};
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_identity::Actor;
use modelroute_testkit::oauth::{Account, CLIENT_ID, CLIENT_SECRET, OAuthStandIn, Provider, TokenFault};
use modelroute_types::Secret;
use serde_json::Value;

use crate::helpers::{Reply, TestApp};

const PUBLIC: &str = "https://app.modelroute.test";

/// The server with a sign-in provider's stand-in.
struct App {
    app: TestApp,
    provider: OAuthStandIn,
    name: &'static str,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

fn account(subject: &str, email: &str, verified: bool) -> Account {
    Account { subject: subject.into(), email: email.into(), email_verified: verified, name: "Ada Lovelace".into() }
}

async fn spawn(db: TestDb, provider: Provider, who: Account) -> App {
    let stand_in = OAuthStandIn::start(provider, who).await;
    let base = stand_in.base_url();
    let name = match provider {
        Provider::Google => "google",
        Provider::GitHub => "github",
    };
    let app = TestApp::spawn(db, |settings| {
        settings.identity.public_url = PUBLIC.into();
        // Every sign-in here comes from 127.0.0.1: the per-IP limit would stop the test.
        settings.identity.rate_limits.per_ip_auth_per_minute = 0;
        match provider {
            Provider::Google => {
                let g = &mut settings.identity.oauth.google;
                g.client_id = CLIENT_ID.into();
                g.client_secret = Secret::new(CLIENT_SECRET);
                g.issuer = base;
            }
            Provider::GitHub => {
                let g = &mut settings.identity.oauth.github;
                g.client_id = CLIENT_ID.into();
                g.client_secret = Secret::new(CLIENT_SECRET);
                g.authorize_url = format!("{base}/login/oauth/authorize");
                g.token_url = format!("{base}/login/oauth/access_token");
                g.api_url = base;
            }
        }
    })
    .await;
    App { app, provider: stand_in, name }
}

impl App {
    /// A browser's `GET` of `url` (a path, or a URL at PUBLIC or elsewhere) with `cookie`.
    async fn visit(&self, url: &str, cookie: Option<String>) -> Reply {
        // The browser reaches this server at PUBLIC; here it listens on a local port.
        let url = url.replace(PUBLIC, &format!("http://127.0.0.1:{}", self.port));
        let cookie: Vec<_> = cookie.map(|c| ("cookie", c)).into_iter().collect();
        self.request(Method::GET, &url, &cookie, "").await
    }

    /// Starts a sign-in and follows it to the provider's redirect back:
    /// the callback URL and the browser's state cookie.
    async fn to_callback(&self) -> (String, String) {
        self.to_callback_landing_on("/dashboard").await
    }

    /// The same, asking to land on `redirect_to` (as it goes in the query) after signing in.
    async fn to_callback_landing_on(&self, redirect_to: &str) -> (String, String) {
        let start = self.visit(&format!("/v1/auth/oauth/{}/start?redirect_to={redirect_to}", self.name), None).await;
        assert_eq!(start.status, StatusCode::FOUND, "{}", start.body);
        let set = start.headers["set-cookie"].to_str().unwrap();
        assert!(set.contains("SameSite=Lax") && set.contains("HttpOnly") && set.contains("Secure"), "{set}");
        let authorize = start.location();
        assert!(authorize.contains("code_challenge_method=S256"), "{authorize}");
        let at_provider = self.visit(&authorize, None).await;
        assert_eq!(at_provider.status, StatusCode::FOUND, "{}", at_provider.body);
        (at_provider.location(), start.cookie("__Host-mr_oauth").unwrap())
    }

    /// A whole sign-in; the callback's answer.
    async fn sign_in(&self) -> Reply {
        let (callback, state) = self.to_callback().await;
        self.visit(&callback, Some(format!("__Host-mr_oauth={state}"))).await
    }

    async fn session_email(&self, reply: &Reply) -> String {
        let token = reply.cookie("__Host-mr_session").expect("a session cookie");
        let me = self.visit("/v1/auth/session", Some(format!("__Host-mr_session={token}"))).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
        serde_json::from_str::<Value>(&me.body).unwrap()["user"]["email"].as_str().unwrap().to_owned()
    }
}

db_test!(async fn google_signs_in_with_a_verified_id_token_and_refuses_every_bad_one(db) {
    let app = spawn(db, Provider::Google, account("g-1", "ada@example.com", true)).await;
    let ok = app.sign_in().await;
    assert_eq!(ok.status, StatusCode::FOUND, "{}", ok.body);
    assert_eq!(ok.location(), "/dashboard");
    assert_eq!(app.session_email(&ok).await, "ada@example.com");
    // The code was redeemed with the PKCE verifier, and the stand-in checked it.
    let sent = app.provider.token_requests();
    assert!(sent[0]["code_verifier"].len() >= 43);
    // Signing in again finds the same account through (issuer, subject).
    let again = app.sign_in().await;
    assert_eq!(again.status, StatusCode::FOUND);
    assert_ne!(again.cookie("__Host-mr_session"), ok.cookie("__Host-mr_session"), "a new session each time");

    for (fault, why) in [
        (TokenFault::WrongAudience, "another client"),
        (TokenFault::Expired, "expired"),
        (TokenFault::WrongNonce, "nonce"),
        (TokenFault::WrongIssuer, "another issuer"),
        (TokenFault::Tampered, "signature"),
    ] {
        app.provider.set_fault(fault);
        let r = app.sign_in().await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{fault:?}: {}", r.body);
        assert!(r.message().contains(why), "{fault:?}: {}", r.message());
        assert!(r.cookie("__Host-mr_session").is_none(), "{fault:?}: no session");
    }
    app.provider.set_fault(TokenFault::None);

    // A state that is not the browser's: refused before any code is redeemed.
    let before = app.provider.token_requests().len();
    let (callback, state) = app.to_callback().await;
    let r = app.visit(&callback, Some(format!("__Host-mr_oauth={}", "0".repeat(64)))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("state"), "{}", r.message());
    let r = app.visit(&callback, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "no state cookie at all");
    let forged = callback.replace(&state, &"f".repeat(64));
    let r = app.visit(&forged, Some(format!("__Host-mr_oauth={}", "f".repeat(64)))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a state this server never issued");
    assert_eq!(app.provider.token_requests().len(), before);
    // The untouched callback still works once; replayed, it is refused.
    let r = app.visit(&callback, Some(format!("__Host-mr_oauth={state}"))).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let replay = app.visit(&callback, Some(format!("__Host-mr_oauth={state}"))).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(replay.message().contains("already used"), "{}", replay.message());

    // At the provider: a redeemed code cannot be redeemed again, and a code
    // without its PKCE verifier cannot be redeemed at all.
    let base = app.provider.base_url();
    let used = app.provider.token_requests().last().unwrap().clone();
    assert_eq!(app.redeem_directly(&base, &used).await, "invalid_grant");
    let (fresh, _) = app.to_callback().await;
    let code = url_param(&fresh, "code");
    let mut no_verifier = used.clone();
    no_verifier.insert("code".into(), code.clone());
    no_verifier.remove("code_verifier");
    assert_eq!(app.redeem_directly(&base, &no_verifier).await, "invalid_grant");
    no_verifier.insert("code_verifier".into(), "a".repeat(64));
    assert_eq!(app.redeem_directly(&base, &no_verifier).await, "invalid_grant", "the wrong verifier");
});

db_test!(async fn after_sign_in_the_browser_lands_only_on_a_local_path(db) {
    let app = spawn(db, Provider::GitHub, account("gh-1", "ada@example.com", true)).await;
    // Browsers drop tabs and newlines from a Location, so `/\t/evil.example/`
    // reads as `//evil.example/`; a CR LF once made the callback answer 500
    // after its session was written. A control character is refused at the
    // start, naming the parameter, before anything is written.
    for redirect in ["%2F%09%2Fevil.example%2F", "%2F%0A%2Fevil.example", "%2F%0D%0A%2Fevil.example"] {
        let start = app.visit(&format!("/v1/auth/oauth/github/start?redirect_to={redirect}"), None).await;
        assert_eq!(start.status, StatusCode::BAD_REQUEST, "{redirect}: {}", start.body);
        assert!(start.body.contains("redirect_to"), "{}", start.body);
    }
    // Anything else that is not a plain local path lands on `/`.
    for redirect in ["%2F%2Fevil.example", "https%3A%2F%2Fevil.example", "%2F%5Cevil.example", "%2F%E2%80%AEx"] {
        let (callback, state) = app.to_callback_landing_on(redirect).await;
        let r = app.visit(&callback, Some(format!("__Host-mr_oauth={state}"))).await;
        assert_eq!(r.status, StatusCode::FOUND, "{redirect}: {}", r.body);
        assert_eq!(r.location(), "/", "{redirect}");
        assert!(r.cookie("__Host-mr_session").is_some(), "{redirect}: signed in");
    }
    let (callback, state) = app.to_callback_landing_on("%2Fsettings%3Ftab%3Dkeys").await;
    let r = app.visit(&callback, Some(format!("__Host-mr_oauth={state}"))).await;
    assert_eq!(r.location(), "/settings?tab=keys");
});

db_test!(async fn accounts_link_only_through_a_verified_email(db) {
    let app = spawn(db, Provider::Google, account("g-bob", "bob@example.com", true)).await;
    let id = &app.services.identity;
    // Bob has a verified password account: Google links to it.
    id.sign_up("bob@example.com", "correct horse battery staple", "Bob", &Actor::default()).await.unwrap();
    let token = id.outbox("bob@example.com").await.unwrap()[0].body.split("token=").nth(1).unwrap()[..64].to_owned();
    let bob = id.verify_email(&token, &Actor::default()).await.unwrap();
    let r = app.sign_in().await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(app.session_email(&r).await, "bob@example.com");
    let session = id.session(&r.cookie("__Host-mr_session").unwrap()).await.unwrap();
    assert_eq!(session.user_id, bob.id, "linked, not a second account");
    id.login("bob@example.com", "correct horse battery staple", None, &Actor::default()).await.unwrap();

    // Mallory signed up with Carol's address and never verified it: when Carol
    // signs in with Google, the account is hers and Mallory's password is void.
    id.sign_up("carol@example.com", "mallorys own passphrase", "Mallory", &Actor::default()).await.unwrap();
    app.provider.sign_in_as(account("g-carol", "carol@example.com", true));
    let r = app.sign_in().await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(id.login("carol@example.com", "mallorys own passphrase", None, &Actor::default()).await.is_err());

    // An email the provider has not verified links nothing and creates nothing.
    app.provider.sign_in_as(account("g-dave", "dave@example.com", false));
    let r = app.sign_in().await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.message().contains("did not confirm an email"), "{}", r.message());
    // GitHub is not configured here: its start is a 404.
    assert_eq!(app.visit("/v1/auth/oauth/github/start", None).await.status, StatusCode::NOT_FOUND);
});

db_test!(async fn github_signs_in_through_its_user_api(db) {
    let app = spawn(db, Provider::GitHub, account("4242", "ada@example.com", true)).await;
    let r = app.sign_in().await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(app.session_email(&r).await, "ada@example.com", "the primary verified address, not the noreply one");
    assert!(app.provider.token_requests()[0].contains_key("code_verifier"));
    let replay = app.visit("/v1/auth/oauth/github/callback?code=code-1&state=x", Some("__Host-mr_oauth=x".into())).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    app.provider.sign_in_as(account("4343", "eve@example.com", false));
    let r = app.sign_in().await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "an unverified primary email");
    let denied = app.visit("/v1/auth/oauth/github/callback?error=access_denied&state=x", None).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.visit("/v1/auth/oauth/gitlab/start", None).await.status, StatusCode::NOT_FOUND);
});

fn url_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap().to_owned()
}

impl TestApp {
    /// Posts a token request straight to the Google stand-in at `base`; answers its `error`.
    async fn redeem_directly(&self, base: &str, form: &HashMap<String, String>) -> String {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('%', "%25").replace('&', "%26").replace('+', "%2B")))
            .collect();
        let form_type = [("content-type", "application/x-www-form-urlencoded".to_owned())];
        let r = self.request(Method::POST, &format!("{base}/token"), &form_type, body.join("&")).await;
        r.json["error"].as_str().unwrap_or("none").to_owned()
    }
}
