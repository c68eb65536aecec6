//! Accounts over HTTP, through the real server on port 0, on SQLite and
//! PostgreSQL: sign-up to org management in a browser session, the cookie
//! attributes, CSRF and origin checks, answers that do not enumerate
//! accounts, per-IP limits, and tenant isolation (404, not 403) for keys and
//! sessions alike.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_http::{Services, Settings};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const ORIGIN: &str = "https://app.modelroute.test";

struct App {
    port: u16,
    key: String,
    org: String,
    services: Services,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    _db: TestDb,
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    json: Value,
}

/// A browser: its cookies and CSRF token.
#[derive(Default, Clone)]
struct Browser {
    session: Option<String>,
    device: Option<String>,
    csrf: Option<String>,
    org: Option<String>,
}

async fn spawn(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> App {
    let s = common::start(&db, |settings| {
        settings.identity.public_url = format!("{ORIGIN}/");
        tweak(settings);
    })
    .await;
    App {
        port: s.port,
        key: s.bootstrap.token,
        org: s.bootstrap.org.id.to_string(),
        services: s.services,
        client: Client::builder(TokioExecutor::new()).build_http(),
        _db: db,
    }
}

impl App {
    async fn call(&self, method: Method, path: &str, headers: &[(&str, String)], body: Option<Value>) -> Reply {
        let mut req = Request::builder().method(method).uri(format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .unwrap();
        let res = self.client.request(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Reply { status, headers, json }
    }

    /// A request as `browser`: its cookies, and for writes its CSRF token and origin.
    async fn browse(&self, b: &Browser, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut h = vec![];
        let cookies: Vec<String> = [("__Host-mr_session", &b.session), ("__Host-mr_device", &b.device)]
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n}={v}")))
            .collect();
        if !cookies.is_empty() {
            h.push(("cookie", cookies.join("; ")));
        }
        if method != Method::GET {
            h.push(("origin", ORIGIN.to_owned()));
            if let Some(c) = &b.csrf {
                h.push(("x-csrf-token", c.clone()));
            }
        }
        if let Some(o) = &b.org {
            h.push(("modelroute-organization", o.clone()));
        }
        self.call(method, path, &h, body).await
    }

    async fn with_key(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, &[("authorization", format!("Bearer {key}"))], body).await
    }

    async fn token(&self, to: &str, kind: &str) -> String {
        for _ in 0..100 {
            if let Some(m) = self.services.identity.outbox(to).await.unwrap().into_iter().find(|m| m.kind == kind) {
                let at = m.body.find("token=").unwrap() + 6;
                return m.body[at..at + 64].to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {kind} email to {to}");
    }

    /// Signs up, verifies and logs in `email`.
    async fn user(&self, email: &str) -> Browser {
        let r = self
            .call(Method::POST, "/v1/auth/signup", &[], Some(json!({ "email": email, "password": PASSWORD })))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        let token = self.token(email, "verify_email").await;
        let r = self.call(Method::POST, "/v1/auth/verify-email", &[], Some(json!({ "token": token }))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        self.login(email, PASSWORD).await
    }

    async fn login(&self, email: &str, password: &str) -> Browser {
        let r =
            self.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": email, "password": password }))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let cookie = |name: &str| {
            r.headers
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.starts_with(&format!("{name}=")))
                .map(|v| v.split(';').next().unwrap().split_once('=').unwrap().1.to_owned())
        };
        Browser {
            session: cookie("__Host-mr_session"),
            device: cookie("__Host-mr_device"),
            csrf: r.json["csrf_token"].as_str().map(str::to_owned),
            org: None,
        }
    }
}

fn code(r: &Reply) -> &str {
    r.json["error"]["code"].as_str().unwrap_or_default()
}

db_test!(async fn a_browser_signs_up_and_manages_its_org(db) {
    let app = spawn(db, |_| {}).await;
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "ada@example.com", "password": PASSWORD }))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let ada = app.user("ada@example.com").await;

    // The session cookie has every attribute a __Host- cookie needs.
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "ada@example.com", "password": PASSWORD }))).await;
    let set: Vec<&str> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    let session = set.iter().find(|c| c.starts_with("__Host-mr_session=")).unwrap();
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    assert!(!session.contains("Domain"), "__Host- cookies have no Domain");
    assert_eq!(r.headers["cache-control"], "no-store");

    let me = app.browse(&ada, Method::GET, "/v1/auth/session", None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json["user"]["email"], "ada@example.com");
    assert_eq!(me.json["organizations"], json!([]));

    // Writes need the CSRF token and the public origin.
    let no_csrf = Browser { csrf: None, ..ada.clone() };
    let r = app.browse(&no_csrf, Method::POST, "/v1/orgs", Some(json!({ "name": "Ada Labs" }))).await;
    assert_eq!((r.status, code(&r)), (StatusCode::FORBIDDEN, "csrf_failed"));
    let cookie = format!("__Host-mr_session={}", ada.session.clone().unwrap());
    let csrf = ada.csrf.clone().unwrap();
    let r = app
        .call(Method::POST, "/v1/orgs", &[("cookie", cookie.clone()), ("x-csrf-token", csrf.clone()), ("origin", "https://evil.example".into())], Some(json!({ "name": "x" })))
        .await;
    assert_eq!((r.status, code(&r)), (StatusCode::FORBIDDEN, "csrf_failed"));
    let r = app.call(Method::POST, "/v1/orgs", &[("cookie", cookie.clone()), ("x-csrf-token", csrf.clone())], Some(json!({ "name": "x" }))).await;
    assert_eq!((r.status, code(&r)), (StatusCode::FORBIDDEN, "csrf_failed"), "no Origin nor Referer");
    let r = app
        .call(Method::POST, "/v1/orgs", &[("cookie", cookie), ("x-csrf-token", csrf), ("referer", format!("{ORIGIN}/settings"))], Some(json!({ "name": "Ada Labs" })))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "a same-origin Referer will do: {}", r.json);
    assert_eq!(r.json["role"], "owner");
    let org = r.json["id"].as_str().unwrap().to_owned();

    // Signed in to one org, org-scoped endpoints need no header.
    let projects = app.browse(&ada, Method::GET, &format!("/v1/orgs/{org}/projects"), None).await;
    assert_eq!(projects.json["data"][0]["name"], "default");
    let project = projects.json["data"][0]["id"].as_str().unwrap().to_owned();
    let r = app.browse(&ada, Method::POST, "/v1/keys", Some(json!({ "project_id": project, "name": "ci", "scopes": ["read", "manage"] }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let key = r.json["token"].as_str().unwrap().to_owned();
    // API keys need no CSRF token.
    let r = app.with_key(&key, Method::POST, &format!("/v1/orgs/{org}/projects"), Some(json!({ "name": "second" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    // Executions need an API key, not a session.
    let r = app.browse(&ada, Method::POST, "/v1/chat/completions", Some(json!({ "model": "builtin/echo", "messages": [{"role": "user", "content": "hi"}] }))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Invite Bob as a member; he signs up, accepts, and can read but not manage.
    let r = app.browse(&ada, Method::POST, &format!("/v1/orgs/{org}/invitations"), Some(json!({ "email": "bob@example.com" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let mut bob = app.user("bob@example.com").await;
    let token = app.token("bob@example.com", "invitation").await;
    let r = app.browse(&bob, Method::POST, "/v1/invitations/accept", Some(json!({ "token": token }))).await;
    assert_eq!((r.status, r.json["role"].as_str()), (StatusCode::OK, Some("member")), "{}", r.json);
    bob.org = Some(org.clone());
    let members = app.browse(&bob, Method::GET, &format!("/v1/orgs/{org}/members"), None).await;
    assert_eq!(members.json["data"].as_array().unwrap().len(), 2);
    let bob_id = members.json["data"][1]["user_id"].as_str().unwrap().to_owned();
    let r = app.browse(&bob, Method::GET, "/v1/keys", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "members read, they do not manage keys");
    let r = app.browse(&ada, Method::PATCH, &format!("/v1/orgs/{org}/members/{bob_id}"), Some(json!({ "role": "admin" }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(app.browse(&bob, Method::GET, "/v1/keys", None).await.status, StatusCode::OK);
    let r = app.browse(&ada, Method::PATCH, &format!("/v1/orgs/{org}/members/{bob_id}"), Some(json!({ "role": "emperor" }))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);

    // Audit: the org's admins see who did what.
    let events = app.browse(&ada, Method::GET, "/v1/audit-events", None).await;
    let actions: Vec<&str> = events.json["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["org.created", "api_key.created", "member.invited", "member.joined", "member.role_changed"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }

    // Logout ends the session; the cookie is cleared.
    let r = app.browse(&ada, Method::POST, "/v1/auth/logout", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(app.browse(&ada, Method::GET, "/v1/auth/session", None).await.status, StatusCode::UNAUTHORIZED);
});

db_test!(async fn another_orgs_things_are_not_found_for_keys_and_sessions(db) {
    let app = spawn(db, |_| {}).await;
    // Org A: the bootstrapped org and its key, with one execution.
    let r = app.with_key(&app.key, Method::POST, "/v1/chat/completions", Some(json!({ "model": "builtin/echo", "messages": [{"role": "user", "content": "hi"}] }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let execution = r.json["id"].as_str().unwrap().to_owned();
    let a_keys = app.with_key(&app.key, Method::GET, "/v1/keys", None).await;
    let a_key_id = a_keys.json["data"][0]["id"].as_str().unwrap().to_owned();
    let a_projects = app.with_key(&app.key, Method::GET, &format!("/v1/orgs/{}/projects", app.org), None).await;
    let a_project = a_projects.json["data"][0]["id"].as_str().unwrap().to_owned();
    // Org B: Eve's.
    let mut eve = app.user("eve@example.com").await;
    let r = app.browse(&eve, Method::POST, "/v1/orgs", Some(json!({ "name": "Evil" }))).await;
    let b_org = r.json["id"].as_str().unwrap().to_owned();
    let a = app.org.clone();

    // Eve's session, naming org A explicitly or in the path: not found.
    for path in [format!("/v1/orgs/{a}"), format!("/v1/orgs/{a}/members"), format!("/v1/orgs/{a}/projects"), format!("/v1/orgs/{a}/invitations")] {
        let r = app.browse(&eve, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.json);
    }
    let r = app.browse(&eve, Method::POST, &format!("/v1/orgs/{a}/invitations"), Some(json!({ "email": "eve2@example.com" }))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    eve.org = Some(a.clone());
    assert_eq!(app.browse(&eve, Method::GET, "/v1/keys", None).await.status, StatusCode::NOT_FOUND);
    // In her own org, A's things are not found either.
    eve.org = Some(b_org.clone());
    for path in [format!("/v1/executions/{execution}"), format!("/v1/projects/{a_project}")] {
        let r = app.browse(&eve, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.json);
    }
    let r = app.browse(&eve, Method::DELETE, &format!("/v1/keys/{a_key_id}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A's key against B: not found.
    for path in [format!("/v1/orgs/{b_org}"), format!("/v1/orgs/{b_org}/members"), format!("/v1/orgs/{b_org}/projects")] {
        let r = app.with_key(&app.key, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.json);
    }
    let r = app.with_key(&app.key, Method::POST, &format!("/v1/orgs/{b_org}/projects"), Some(json!({ "name": "mine now" }))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // And A's key still sees A's execution.
    assert_eq!(app.with_key(&app.key, Method::GET, &format!("/v1/executions/{execution}"), None).await.status, StatusCode::OK);
});

db_test!(async fn answers_do_not_enumerate_accounts_and_ips_are_limited(db) {
    let app = spawn(db, |s| s.identity.rate_limits.per_ip_auth_per_minute = 12).await;
    app.user("ada@example.com").await; // 2 limited calls (sign-up, login)
    let signup = |email: &str| json!({ "email": email, "password": "another good passphrase" });
    let known = app.call(Method::POST, "/v1/auth/signup", &[], Some(signup("ada@example.com"))).await;
    let unknown = app.call(Method::POST, "/v1/auth/signup", &[], Some(signup("new@example.com"))).await;
    assert_eq!((known.status, &known.json), (unknown.status, &unknown.json));
    let login = |email: &str| json!({ "email": email, "password": "wrong password!!" });
    let known = app.call(Method::POST, "/v1/auth/login", &[], Some(login("ada@example.com"))).await;
    let unknown = app.call(Method::POST, "/v1/auth/login", &[], Some(login("nobody@example.com"))).await;
    assert_eq!(known.status, StatusCode::UNAUTHORIZED);
    assert_eq!((known.status, &known.json), (unknown.status, &unknown.json));
    let reset = |email: &str| json!({ "email": email });
    let known = app.call(Method::POST, "/v1/auth/password-reset", &[], Some(reset("ada@example.com"))).await;
    let unknown = app.call(Method::POST, "/v1/auth/password-reset", &[], Some(reset("nobody@example.com"))).await;
    assert_eq!(known.status, StatusCode::ACCEPTED);
    assert_eq!((known.status, &known.json), (unknown.status, &unknown.json));
    // Bad input names the field.
    let r = app.call(Method::POST, "/v1/auth/signup", &[], Some(json!({ "email": "x@example.com", "password": "password" }))).await;
    assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("password")));
    let r = app.call(Method::POST, "/v1/auth/signup", &[], Some(json!({ "email": "nope", "password": PASSWORD }))).await;
    assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("email")));
    // 10 limited calls so far (the reset confirm is limited too); the 13th is refused.
    let token = app.token("ada@example.com", "password_reset").await;
    let r = app.call(Method::POST, "/v1/auth/password-reset/confirm", &[], Some(json!({ "token": token, "password": "a brand new passphrase" }))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "ada@example.com", "password": "a brand new passphrase" }))).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(login("ada@example.com"))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
    assert!(r.headers.contains_key("retry-after"));
});

db_test!(async fn the_brute_force_lock_answers_429_and_spares_the_owners_browser(db) {
    let app = spawn(db, |s| s.identity.max_failed_logins_per_hour = 3).await;
    let ada = app.user("ada@example.com").await;
    for _ in 0..3 {
        let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "ada@example.com", "password": "guess guess guess" }))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "ada@example.com", "password": PASSWORD }))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
    assert!(r.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 3000);
    // Ada's browser holds its device cookie: it still gets in.
    let device = format!("__Host-mr_device={}", ada.device.clone().unwrap());
    let r = app.call(Method::POST, "/v1/auth/login", &[("cookie", device)], Some(json!({ "email": "ada@example.com", "password": PASSWORD }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
});

db_test!(async fn a_key_rotates_with_a_grace_period(db) {
    let app = spawn(db, |_| {}).await;
    let projects = app.with_key(&app.key, Method::GET, &format!("/v1/orgs/{}/projects", app.org), None).await;
    let project = projects.json["data"][0]["id"].as_str().unwrap().to_owned();
    let r = app.with_key(&app.key, Method::POST, "/v1/keys", Some(json!({ "project_id": project, "name": "ci", "scopes": ["read"] }))).await;
    let (id, first) = (r.json["id"].as_str().unwrap().to_owned(), r.json["token"].as_str().unwrap().to_owned());
    assert_eq!(app.with_key(&first, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK);
    // Rotate with the default grace (an empty body): both secrets work.
    let r = app.with_key(&app.key, Method::POST, &format!("/v1/keys/{id}/rotate"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let second = r.json["token"].as_str().unwrap().to_owned();
    assert_eq!(r.json["id"], id.as_str());
    assert!(r.json["previous_secret_valid_until"].is_string());
    assert_eq!(app.with_key(&second, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK);
    assert_eq!(app.with_key(&first, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK);
    // Rotate again with no grace: the second secret stops at once, the first too (it is two rotations old).
    let r = app.with_key(&app.key, Method::POST, &format!("/v1/keys/{id}/rotate"), Some(json!({ "grace_period_secs": 0 }))).await;
    let third = r.json["token"].as_str().unwrap().to_owned();
    for old in [&first, &second] {
        assert_eq!(app.with_key(old, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.with_key(&third, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK);
    let r = app.with_key(&app.key, Method::POST, &format!("/v1/keys/{id}/rotate"), Some(json!({ "grace_period_secs": 9_999_999 }))).await;
    assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("grace_period_secs")));
    let events = app.with_key(&app.key, Method::GET, "/v1/audit-events?action=api_key.rotated", None).await;
    assert_eq!(events.json["data"].as_array().unwrap().len(), 2);
});

db_test!(async fn a_user_sees_their_own_security_history(db) {
    let app = spawn(db, |_| {}).await;
    app.user("ada@example.com").await;
    app.user("bob@example.com").await;
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "ada@example.com", "password": "not it at all" }))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let ada = app.login("ada@example.com", PASSWORD).await;
    let mine = app.browse(&ada, Method::GET, "/v1/auth/events", None).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.json);
    let actions: Vec<&str> = mine.json["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["user.signed_up", "user.email_verified", "user.login", "user.login_failed"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    // Only Ada's: Bob's sign-up and logins are not in it.
    assert_eq!(actions.iter().filter(|a| **a == "user.signed_up").count(), 1);
    let failed = app.browse(&ada, Method::GET, "/v1/auth/events?action=user.login_failed", None).await;
    assert_eq!(failed.json["data"][0]["actor"], "anonymous");
    assert_eq!(failed.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.call(Method::GET, "/v1/auth/events", &[], None).await.status, StatusCode::UNAUTHORIZED);
});
