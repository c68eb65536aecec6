//! Accounts over HTTP, through the real server on port 0, on SQLite and
//! PostgreSQL: sign-up to org management in a browser session, the cookie
//! attributes, CSRF and origin checks, answers that do not enumerate
//! accounts, per-IP limits, and tenant isolation (404, not 403) for keys and
//! sessions alike.

use std::time::Duration;

use hyper::{Method, StatusCode};
use modelroute_app::Settings;
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp};

const PASSWORD: &str = "correct horse battery staple";
const ORIGIN: &str = "https://app.modelroute.test";

/// A browser: its cookies and CSRF token.
#[derive(Default, Clone)]
struct Browser {
    session: Option<String>,
    device: Option<String>,
    csrf: Option<String>,
    org: Option<String>,
}

async fn spawn(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn(db, |settings| {
        settings.identity.public_url = format!("{ORIGIN}/");
        tweak(settings);
    })
    .await
}

impl TestApp {
    async fn call(&self, method: Method, path: &str, headers: &[(&str, String)], body: Option<Value>) -> Reply {
        self.request(method, path, headers, body.map(|b| b.to_string()).unwrap_or_default()).await
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

    /// `email` signed up, owning a new org with $1,000 of credit: the
    /// browser (in that org), the org's id, and a key with every scope.
    async fn funded_org_of(&self, email: &str) -> (Browser, String, String) {
        let mut owner = self.user(email).await;
        let r = self.browse(&owner, Method::POST, "/v1/orgs", Some(json!({ "name": "Ada Labs" }))).await;
        let org = r.json["id"].as_str().unwrap().to_owned();
        owner.org = Some(org.clone());
        let projects = self.browse(&owner, Method::GET, &format!("/v1/orgs/{org}/projects"), None).await;
        let project = projects.json["data"][0]["id"].as_str().unwrap().to_owned();
        let keys = json!({ "project_id": project, "name": "run", "scopes": ["read", "execute", "manage"] });
        let r = self.browse(&owner, Method::POST, "/v1/keys", Some(keys)).await;
        let key = r.json["token"].as_str().unwrap().to_owned();
        let credit = modelroute_types::Money::from_usd(1_000);
        self.services.grant(&org.parse().unwrap(), credit, None).await.unwrap();
        (owner, org, key)
    }

    async fn login(&self, email: &str, password: &str) -> Browser {
        let r =
            self.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": email, "password": password }))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        Browser {
            session: r.cookie("__Host-mr_session"),
            device: r.cookie("__Host-mr_device"),
            csrf: r.json["csrf_token"].as_str().map(str::to_owned),
            org: None,
        }
    }
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
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "csrf_failed"));
    let cookie = format!("__Host-mr_session={}", ada.session.clone().unwrap());
    let csrf = ada.csrf.clone().unwrap();
    let r = app
        .call(Method::POST, "/v1/orgs", &[("cookie", cookie.clone()), ("x-csrf-token", csrf.clone()), ("origin", "https://evil.example".into())], Some(json!({ "name": "x" })))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "csrf_failed"));
    let r = app.call(Method::POST, "/v1/orgs", &[("cookie", cookie.clone()), ("x-csrf-token", csrf.clone())], Some(json!({ "name": "x" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "csrf_failed"), "no Origin nor Referer");
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
    // No key cache: every answer below is what the database holds.
    let app = spawn(db, |s| s.identity.key_cache_ttl_secs = 0).await;
    // Org A: the bootstrapped org and its key, with one execution.
    let r = app.with_key(&app.key, Method::POST, "/v1/chat/completions", Some(json!({ "model": "builtin/echo", "messages": [{"role": "user", "content": "hi"}] }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let execution = r.json["id"].as_str().unwrap().to_owned();
    let a_keys = app.with_key(&app.key, Method::GET, "/v1/keys", None).await;
    let a_key_id = a_keys.json["data"][0]["id"].as_str().unwrap().to_owned();
    let a_projects = app.with_key(&app.key, Method::GET, &format!("/v1/orgs/{}/projects", app.org), None).await;
    let a_project = a_projects.json["data"][0]["id"].as_str().unwrap().to_owned();
    let a_preferences = app.with_key(&app.key, Method::GET, "/v1/routing/preferences", None).await.json;
    // Org B: Eve's.
    let mut eve = app.user("eve@example.com").await;
    let eve_id = app.browse(&eve, Method::GET, "/v1/auth/session", None).await.json["user"]["id"].as_str().unwrap().to_owned();
    let r = app.browse(&eve, Method::POST, "/v1/orgs", Some(json!({ "name": "Evil" }))).await;
    let b_org = r.json["id"].as_str().unwrap().to_owned();
    let a = app.org.to_string();
    // What org A holds, to compare after every attempt.
    let snapshot = || async {
        let mut held = serde_json::Map::new();
        for path in ["/v1/keys".to_owned(), format!("/v1/orgs/{a}/projects"), format!("/v1/orgs/{a}/members"), format!("/v1/orgs/{a}/invitations"), "/v1/routing/preferences".to_owned()] {
            held.insert(path.clone(), app.with_key(&app.key, Method::GET, &path, None).await.json);
        }
        Value::Object(held)
    };
    let before = snapshot().await;
    assert_eq!(before["/v1/keys"]["data"].as_array().unwrap().len(), 1, "{before}");

    // Eve's session, naming org A explicitly or in the path: not found.
    for path in [format!("/v1/orgs/{a}"), format!("/v1/orgs/{a}/members"), format!("/v1/orgs/{a}/projects"), format!("/v1/orgs/{a}/invitations")] {
        let r = app.browse(&eve, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.json);
    }
    // Every write naming org A, from Eve's session in her own org or in A's name: not found, and nothing changes.
    let writes: Vec<(Option<String>, Method, String, Option<Value>)> = vec![
        (Some(b_org.clone()), Method::DELETE, format!("/v1/keys/{a_key_id}"), None),
        (Some(b_org.clone()), Method::POST, format!("/v1/keys/{a_key_id}/rotate"), Some(json!({ "grace_period_secs": 0 }))),
        (Some(b_org.clone()), Method::POST, "/v1/keys".into(), Some(json!({ "project_id": a_project, "name": "mine", "scopes": ["execute"] }))),
        (Some(a.clone()), Method::DELETE, format!("/v1/keys/{a_key_id}"), None),
        (Some(a.clone()), Method::PUT, "/v1/routing/preferences".into(), Some(json!({ "policy": "fastest", "fallbacks": { "builtin/echo": ["builtin/echo"] } }))),
        (None, Method::POST, format!("/v1/orgs/{a}/invitations"), Some(json!({ "email": "eve2@example.com" }))),
        (None, Method::POST, format!("/v1/orgs/{a}/projects"), Some(json!({ "name": "mine now" }))),
        (None, Method::PATCH, format!("/v1/orgs/{a}/members/{eve_id}"), Some(json!({ "role": "owner" }))),
        (None, Method::DELETE, format!("/v1/orgs/{a}/members/{eve_id}"), None),
    ];
    for (acting_for, method, path, body) in writes {
        eve.org = acting_for.clone();
        let r = app.browse(&eve, method.clone(), &path, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path} as {acting_for:?}: {}", r.json);
        assert_eq!(snapshot().await, before, "{method} {path} changed org A");
    }
    // A's key still works; no audit log recorded a revocation.
    assert_eq!(app.with_key(&app.key, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK);
    let revoked = app.with_key(&app.key, Method::GET, "/v1/audit-events?action=api_key.revoked", None).await;
    assert_eq!(revoked.json["data"], json!([]));
    assert_eq!(app.with_key(&app.key, Method::GET, "/v1/routing/preferences", None).await.json, a_preferences);
    // Eve's own org's routing settings (fallbacks included) are hers to write, and leave A's alone.
    eve.org = Some(b_org.clone());
    let own = json!({ "policy": "fastest", "fallbacks": { "builtin/echo": ["builtin/echo"] } });
    let r = app.browse(&eve, Method::PUT, "/v1/routing/preferences", Some(own)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(app.with_key(&app.key, Method::GET, "/v1/routing/preferences", None).await.json, a_preferences);
    let mine = app.browse(&eve, Method::GET, "/v1/keys", None).await;
    assert_eq!(mine.json["data"], json!([]), "no key was made in B either");
    eve.org = Some(a.clone());
    assert_eq!(app.browse(&eve, Method::GET, "/v1/keys", None).await.status, StatusCode::NOT_FOUND);
    // In her own org, A's things are not found either.
    eve.org = Some(b_org.clone());
    for path in [format!("/v1/executions/{execution}"), format!("/v1/projects/{a_project}")] {
        let r = app.browse(&eve, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.json);
    }
    // A's key against B: not found, and B is unchanged.
    for path in [format!("/v1/orgs/{b_org}"), format!("/v1/orgs/{b_org}/members"), format!("/v1/orgs/{b_org}/projects")] {
        let r = app.with_key(&app.key, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.json);
    }
    let b_projects = app.browse(&eve, Method::GET, &format!("/v1/orgs/{b_org}/projects"), None).await.json;
    let r = app.with_key(&app.key, Method::POST, &format!("/v1/orgs/{b_org}/projects"), Some(json!({ "name": "mine now" }))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.with_key(&app.key, Method::POST, &format!("/v1/orgs/{b_org}/invitations"), Some(json!({ "email": "x@example.com" }))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(app.browse(&eve, Method::GET, &format!("/v1/orgs/{b_org}/projects"), None).await.json, b_projects);
    assert_eq!(app.browse(&eve, Method::GET, &format!("/v1/orgs/{b_org}/invitations"), None).await.json["data"], json!([]));
    // And A's key still sees A's execution.
    assert_eq!(app.with_key(&app.key, Method::GET, &format!("/v1/executions/{execution}"), None).await.status, StatusCode::OK);
});

db_test!(async fn names_and_filters_refuse_control_characters(db) {
    let app = spawn(db, |_| {}).await;
    let ada = app.user("ada@example.com").await;
    let r = app.browse(&ada, Method::POST, "/v1/orgs", Some(json!({ "name": "Ada Labs" }))).await;
    let org = r.json["id"].as_str().unwrap().to_owned();
    let project = app.browse(&ada, Method::GET, &format!("/v1/orgs/{org}/projects"), None).await.json["data"][0]["id"].as_str().unwrap().to_owned();
    // NUL (PostgreSQL cannot store it), newlines (the org name goes into
    // invitation emails), bidirectional overrides (text shown as other text).
    for bad in ["a\u{0}b", "Acme\nBcc: x@evil.example", "Acme\u{202e}moc.live", "tab\there", "a\u{2028}b"] {
        let r = app.browse(&ada, Method::POST, "/v1/orgs", Some(json!({ "name": bad }))).await;
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("name")), "org {bad:?}: {}", r.json);
        let r = app.browse(&ada, Method::POST, &format!("/v1/orgs/{org}/projects"), Some(json!({ "name": bad }))).await;
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("name")), "project {bad:?}: {}", r.json);
        let r = app.browse(&ada, Method::POST, "/v1/keys", Some(json!({ "project_id": project, "name": bad, "scopes": ["read"] }))).await;
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("name")), "key {bad:?}: {}", r.json);
        let r = app.call(Method::POST, "/v1/auth/signup", &[], Some(json!({ "email": "new@example.com", "password": PASSWORD, "name": bad }))).await;
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("name")), "sign-up {bad:?}: {}", r.json);
    }
    // Nothing was made by any of them.
    assert_eq!(app.browse(&ada, Method::GET, "/v1/orgs", None).await.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.browse(&ada, Method::GET, &format!("/v1/orgs/{org}/projects"), None).await.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.browse(&ada, Method::GET, "/v1/keys", None).await.json["data"], json!([]));
    // Filters with a control character: a 400 naming the parameter, on keys and sessions alike.
    for (path, param) in [
        ("/v1/usage?model=%00", "model"),
        ("/v1/usage.csv?model=%00", "model"),
        ("/v1/usage?project_id=x%0Ay", "project_id"),
        ("/v1/audit-events?action=%00", "action"),
        ("/v1/auth/events?action=%00", "action"),
    ] {
        let r = if path.starts_with("/v1/auth/") {
            app.browse(&ada, Method::GET, path, None).await
        } else {
            app.with_key(&app.key, Method::GET, path, None).await
        };
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some(param)), "{path}: {}", r.json);
    }
    // Ordinary names, including non-Latin scripts, are fine.
    let r = app.browse(&ada, Method::POST, &format!("/v1/orgs/{org}/projects"), Some(json!({ "name": "Zürich 株式会社 עברית 🚀" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
});

db_test!(async fn cross_site_pages_cannot_sign_a_browser_in(db) {
    let app = spawn(db, |_| {}).await;
    app.user("attacker@example.com").await;
    let creds = json!({ "email": "attacker@example.com", "password": PASSWORD });
    let no_session = |r: &Reply| !r.headers.get_all("set-cookie").iter().any(|c| c.to_str().unwrap().starts_with("__Host-mr_session="));
    // A cross-site form posts text/plain (no preflight): refused before anything is read.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let r = app.call(Method::POST, "/v1/auth/login", &[("content-type", content_type.into())], Some(creds.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"), "{content_type}");
        assert!(no_session(&r));
    }
    // JSON from another site's page (fetch with CORS would need a preflight,
    // but the origin is checked anyway): refused, for sign-up too.
    for (header, value) in [("origin", "https://evil.example"), ("referer", "https://evil.example/page"), ("origin", "null")] {
        let r = app.call(Method::POST, "/v1/auth/login", &[(header, value.into())], Some(creds.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "csrf_failed"), "{header}: {value}: {}", r.json);
        assert!(no_session(&r));
        let r = app.call(Method::POST, "/v1/auth/signup", &[(header, value.into())], Some(json!({ "email": "victim@example.com", "password": PASSWORD }))).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "csrf_failed"), "{header}: {value}");
    }
    assert!(app.services.identity.outbox("victim@example.com").await.unwrap().is_empty(), "no account was started");
    // The site itself, and programs (no Origin, no Referer), sign in.
    let r = app.call(Method::POST, "/v1/auth/login", &[("origin", ORIGIN.into())], Some(creds.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(creds)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // A POST without a body needs no content type.
    let keys = app.with_key(&app.key, Method::GET, "/v1/keys", None).await;
    let id = keys.json["data"][0]["id"].as_str().unwrap().to_owned();
    let r = app.call(Method::POST, &format!("/v1/keys/{id}/rotate"), &[("authorization", format!("Bearer {}", app.key)), ("content-type", "text/plain".into())], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // With a body, a key-authenticated JSON endpoint takes JSON only, too.
    let r = app.call(Method::PUT, "/v1/routing/preferences", &[("authorization", format!("Bearer {}", r.json["token"].as_str().unwrap())), ("content-type", "text/plain".into())], Some(json!({ "policy": "fastest" }))).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.json);
});

db_test!(async fn answers_do_not_enumerate_accounts_and_ips_are_limited(db) {
    let app = spawn(db, |s| s.identity.rate_limits.per_ip_auth_per_minute = 13).await;
    app.user("ada@example.com").await; // 3 limited calls (sign-up, verification, login)
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
    // 11 limited calls so far (the reset confirm is limited too); the 14th is refused.
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
    // Rotate again with no grace: the second secret stops at once; the first
    // keeps the day the first rotation promised it.
    let r = app.with_key(&app.key, Method::POST, &format!("/v1/keys/{id}/rotate"), Some(json!({ "grace_period_secs": 0 }))).await;
    let third = r.json["token"].as_str().unwrap().to_owned();
    assert_eq!(app.with_key(&second, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.with_key(&first, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK);
    assert_eq!(app.with_key(&third, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK);
    // A grace beyond 7 days, or one that overflows a date, is a 400 naming it (it once closed the connection).
    for grace in [json!(9_999_999), json!(10_000_000_000_000_u64), json!(u64::MAX)] {
        let r = app.with_key(&app.key, Method::POST, &format!("/v1/keys/{id}/rotate"), Some(json!({ "grace_period_secs": grace }))).await;
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("grace_period_secs")), "{grace}");
    }
    assert_eq!(app.with_key(&third, Method::GET, "/v1/billing/balance", None).await.status, StatusCode::OK, "unchanged");
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
    // Whoever tried her password: not her address to see. Her own login shows hers.
    assert_eq!((&failed.json["data"][0]["ip"], &failed.json["data"][0]["user_agent"]), (&Value::Null, &Value::Null));
    let logins = app.browse(&ada, Method::GET, "/v1/auth/events?action=user.login", None).await;
    assert_eq!(logins.json["data"][0]["ip"], "127.0.0.1");

    // Ada invites Bob to her org, then removes him: Bob's history holds
    // what he did, not Ada's action or her address.
    let r = app.browse(&ada, Method::POST, "/v1/orgs", Some(json!({ "name": "Ada Labs" }))).await;
    let org = r.json["id"].as_str().unwrap().to_owned();
    let r = app.browse(&ada, Method::POST, &format!("/v1/orgs/{org}/invitations"), Some(json!({ "email": "bob@example.com" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let bob = app.login("bob@example.com", PASSWORD).await;
    let token = app.token("bob@example.com", "invitation").await;
    let r = app.browse(&bob, Method::POST, "/v1/invitations/accept", Some(json!({ "token": token }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let bob_id = app.browse(&bob, Method::GET, "/v1/auth/session", None).await.json["user"]["id"].as_str().unwrap().to_owned();
    let r = app.browse(&ada, Method::DELETE, &format!("/v1/orgs/{org}/members/{bob_id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    let his = app.browse(&bob, Method::GET, "/v1/auth/events", None).await;
    let events = his.json["data"].as_array().unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"member.joined") && actions.contains(&"user.login"), "{actions:?}");
    assert!(!actions.contains(&"member.removed"), "an admin's action on his membership: {actions:?}");
    for e in events {
        if e["actor"] != bob_id.as_str() {
            assert_eq!((&e["ip"], &e["user_agent"]), (&Value::Null, &Value::Null), "another party's address: {e}");
        }
    }
    assert_eq!(app.call(Method::GET, "/v1/auth/events", &[], None).await.status, StatusCode::UNAUTHORIZED);
});

db_test!(async fn a_restricted_org_keeps_its_data_and_runs_nothing_until_lifted_and_only_the_operator_lifts_its_own(db) {
    use modelroute_identity::{Actor, RestrictedBy};
    use modelroute_types::OrgId;

    let app = spawn(db, |_| {}).await;
    let (ada, org, key) = app.funded_org_of("ada@example.com").await;
    let org_id: OrgId = org.parse().unwrap();
    let chat = json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "hi" }] });
    let run = async |key: &str| app.with_key(key, Method::POST, "/v1/chat/completions", Some(chat.clone())).await;
    assert_eq!(run(&key).await.status, StatusCode::OK);
    let path = format!("/v1/orgs/{org}/restriction");

    // Neither another org nor a key (even with manage) restricts it.
    let other = app.other_key().await;
    assert_eq!(app.with_key(&other, Method::PUT, &path, None).await.status, StatusCode::NOT_FOUND);
    let r = app.with_key(&key, Method::PUT, &path, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "permission_denied"), "{}", r.json);
    assert!(app.services.identity.restriction(&org_id).await.unwrap().is_none());

    // The owner restricts it: executions are refused, nothing held or charged; data stays readable.
    let r = app.browse(&ada, Method::PUT, &path, Some(json!({ "reason": "reviewing our DPA" }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!((r.json["restricted"].as_bool(), r.json["by"].as_str()), (Some(true), Some("org")));
    let before = app.services.balance(&org_id).await.unwrap();
    let r = run(&key).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "restricted"), "{}", r.json);
    let submit = json!({ "model": "builtin/echo", "input": { "messages": [{ "role": "user", "content": "hi" }] } });
    let r = app.with_key(&key, Method::POST, "/v1/executions", Some(submit)).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "restricted"), "{}", r.json);
    assert_eq!(app.services.balance(&org_id).await.unwrap(), before, "nothing held, nothing charged");
    assert_eq!(app.with_key(&key, Method::GET, "/v1/usage", None).await.status, StatusCode::OK);
    assert_eq!(app.browse(&ada, Method::GET, &path, None).await.json["reason"], "reviewing our DPA");
    // Another org runs as before.
    assert_eq!(run(&app.key).await.status, StatusCode::OK, "the bootstrap org runs as before");
    // Audited.
    let events = app.services.identity.audit_events(&org_id, &modelroute_identity::AuditFilter::default()).await.unwrap();
    assert!(events.iter().any(|e| e.action == "org.restricted"), "{events:?}");

    // The owner lifts it.
    assert_eq!(app.browse(&ada, Method::DELETE, &path, None).await.status, StatusCode::OK);
    assert_eq!(run(&key).await.status, StatusCode::OK);

    // The operator's restriction: the owner cannot lift it; the operator can.
    app.services.identity.restrict(&org_id, RestrictedBy::Operator, Some("a complaint"), &Actor::operator()).await.unwrap();
    assert_eq!(run(&key).await.code(), "restricted", "a cached key sees it at once on this replica");
    let r = app.browse(&ada, Method::DELETE, &path, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "permission_denied"), "{}", r.json);
    let r = app.browse(&ada, Method::PUT, &path, None).await;
    assert_eq!(r.json["by"], "operator", "the owner's restriction does not replace the operator's");
    app.services.identity.lift_restriction(&org_id, RestrictedBy::Operator, &Actor::operator()).await.unwrap();
    assert_eq!(run(&key).await.status, StatusCode::OK);
});

db_test!(async fn an_owners_export_holds_every_class_of_the_org_no_secret_and_nothing_of_another_org(db) {
    use modelroute_types::OrgId;

    let app = spawn(db, |_| {}).await;
    let (ada, org, key) = app.funded_org_of("ada@example.com").await;
    let org_id: OrgId = org.parse().unwrap();
    let chat = json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "hi" }] });
    let ours = app.with_key(&key, Method::POST, "/v1/chat/completions", Some(chat.clone())).await;
    assert_eq!(ours.status, StatusCode::OK, "{}", ours.json);
    let hook = json!({ "url": "https://hooks.example.com/modelroute", "event_types": ["execution.succeeded"] });
    let endpoint = app.with_key(&key, Method::POST, "/v1/webhook-endpoints", Some(hook)).await;
    assert_eq!(endpoint.status, StatusCode::CREATED, "{}", endpoint.json);
    // Another org's execution, which must not appear.
    let theirs = app.chat(&chat).await;
    assert_eq!(theirs.status, StatusCode::OK);

    // Only the owner asks: a key (even with manage) may not, another org's key finds nothing.
    let path = format!("/v1/orgs/{org}/exports");
    let r = app.with_key(&key, Method::POST, &path, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "permission_denied"), "{}", r.json);
    assert_eq!(app.with_key(&app.key, Method::POST, &path, None).await.status, StatusCode::NOT_FOUND);
    let r = app.browse(&ada, Method::POST, &path, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);

    // The link arrives by email; it downloads without credentials.
    let mut link = None;
    for _ in 0..500 {
        let mail = app.services.identity.outbox("ada@example.com").await.unwrap();
        if let Some(m) = mail.into_iter().find(|m| m.kind == "export_ready") {
            let at = m.body.find("/v1/files/").unwrap();
            link = Some(m.body[at..].split_whitespace().next().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let link = link.expect("the export's email");
    let archive = app.call(Method::GET, &link, &[], None).await;
    assert_eq!(archive.status, StatusCode::OK, "{}", archive.body);
    let lines: Vec<Value> = archive.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let manifest = &lines[0];
    assert_eq!((manifest["type"].as_str(), manifest["schema_version"].as_u64()), (Some("manifest"), Some(1)));
    assert_eq!(manifest["subject"]["org"], org.as_str());
    let classes: Vec<&str> = manifest["classes"].as_array().unwrap().iter().map(|c| c["class"].as_str().unwrap()).collect();
    assert_eq!(
        classes,
        ["org", "members", "projects", "api_keys", "executions", "usage", "journal", "webhook_endpoints", "files", "audit_events"]
    );
    let records = |class: &str| -> Vec<&Value> {
        lines.iter().filter(|l| l["class"] == class).map(|l| &l["record"]).collect()
    };
    for (class, at_least) in [("org", 1), ("members", 1), ("projects", 1), ("api_keys", 1), ("executions", 1), ("usage", 1), ("journal", 3), ("webhook_endpoints", 1), ("audit_events", 3)] {
        assert!(records(class).len() >= at_least, "{class}: {:?}", records(class));
        let counted = manifest["classes"].as_array().unwrap().iter().find(|c| c["class"] == class).unwrap()["records"].as_u64();
        assert_eq!(counted, Some(u64::try_from(records(class).len()).unwrap()), "{class}: the manifest counts its records");
    }
    assert_eq!(records("members")[0]["email"], "ada@example.com");
    assert!(records("executions").iter().any(|e| e["id"] == ours.json["id"]));
    // Nothing of another org, and no secret: not the key's token, not the webhook's signing secret.
    assert!(!archive.body.contains(theirs.json["id"].as_str().unwrap()));
    assert!(!archive.body.contains(app.org.as_str()));
    assert!(!archive.body.contains(&key), "the key's token");
    assert!(!archive.body.contains(endpoint.json["secret"].as_str().unwrap()), "the webhook's secret");
    // It is the org's file, and the request is audited.
    let listed = app.with_key(&key, Method::GET, "/v1/files?purpose=export", None).await;
    assert_eq!(listed.json["data"].as_array().map(Vec::len), Some(1), "{}", listed.json);
    let events = app.services.identity.audit_events(&org_id, &modelroute_identity::AuditFilter::default()).await.unwrap();
    assert!(events.iter().any(|e| e.action == "org.export_requested"));
});

/// The columns (`table.column`) of any table in which some cell holds `needle` (as text).
async fn cells_holding(app: &TestApp, needle: &str) -> Vec<String> {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl as _;

    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let schema = modelroute_db::schema_gen::introspect(&app.services.pool).await.unwrap();
    let mut found = Vec::new();
    for (table, t) in &schema.tables {
        for c in &t.columns {
            let q =
                format!("SELECT COUNT(*) AS n FROM \"{table}\" WHERE CAST(\"{}\" AS TEXT) LIKE '%{needle}%'", c.name);
            let n: Vec<N> = match app.services.pool.get().await.unwrap() {
                modelroute_db::DbConn::Postgres(mut conn) => diesel::sql_query(q).load(&mut conn).await.unwrap(),
                modelroute_db::DbConn::Sqlite(mut conn) => diesel::sql_query(q).load(&mut conn).await.unwrap(),
            };
            if n.iter().any(|n| n.n > 0) {
                found.push(format!("{table}.{}", c.name));
            }
        }
    }
    found
}

db_test!(async fn an_erased_user_leaves_no_trace_of_their_email_or_name_while_the_ledger_still_verifies(db) {
    use modelroute_types::OrgId;

    let app = spawn(db, |_| {}).await;
    let (ada, ada_org, _) = app.funded_org_of("ada@example.com").await;
    // Bob: a name, an org of his own with executions paid for, a failed
    // login, a reset email, and an invitation into Ada's org.
    let r = app
        .call(Method::POST, "/v1/auth/signup", &[], Some(json!({ "email": "bob@example.com", "password": PASSWORD, "name": "Bobby Zedwards" })))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let token = app.token("bob@example.com", "verify_email").await;
    app.call(Method::POST, "/v1/auth/verify-email", &[], Some(json!({ "token": token }))).await;
    let mut bob = app.login("bob@example.com", PASSWORD).await;
    let r = app.browse(&bob, Method::POST, "/v1/orgs", Some(json!({ "name": "Bob Co" }))).await;
    let bob_org = r.json["id"].as_str().unwrap().to_owned();
    bob.org = Some(bob_org.clone());
    let bob_org_id: OrgId = bob_org.parse().unwrap();
    let projects = app.browse(&bob, Method::GET, &format!("/v1/orgs/{bob_org}/projects"), None).await;
    let project = projects.json["data"][0]["id"].as_str().unwrap().to_owned();
    let keys = json!({ "project_id": project, "name": "run", "scopes": ["read", "execute"] });
    let key = app.browse(&bob, Method::POST, "/v1/keys", Some(keys)).await.json["token"].as_str().unwrap().to_owned();
    app.services.grant(&bob_org_id, modelroute_types::Money::from_usd(10), None).await.unwrap();
    let chat = json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 16 });
    assert_eq!(app.with_key(&key, Method::POST, "/v1/chat/completions", Some(chat)).await.status, StatusCode::OK);
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "bob@example.com", "password": "wrong password!" }))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.call(Method::POST, "/v1/auth/password-reset", &[], Some(json!({ "email": "bob@example.com" }))).await;
    let invite = json!({ "email": "bob@example.com" });
    let r = app.browse(&ada, Method::POST, &format!("/v1/orgs/{ada_org}/invitations"), Some(invite)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert!(!cells_holding(&app, "bob@example.com").await.is_empty(), "the scan finds what is there");
    let balance = app.services.balance(&bob_org_id).await.unwrap();

    // A wrong password changes nothing; the right one ends every session at once.
    let path = "/v1/auth/account/deletion";
    let r = app.browse(&bob, Method::POST, path, Some(json!({ "password": "not it at all" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{}", r.json);
    assert_eq!(app.browse(&bob, Method::GET, "/v1/auth/session", None).await.status, StatusCode::OK);
    let r = app.browse(&bob, Method::POST, path, Some(json!({ "password": PASSWORD }))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(app.browse(&bob, Method::GET, "/v1/auth/session", None).await.status, StatusCode::UNAUTHORIZED);
    // Within the grace period he may sign in and cancel, and ask again.
    let again = app.login("bob@example.com", PASSWORD).await;
    assert_eq!(app.browse(&again, Method::DELETE, path, None).await.status, StatusCode::OK);
    assert_eq!(app.browse(&again, Method::DELETE, path, None).await.status, StatusCode::NOT_FOUND, "nothing pending");
    let r = app.browse(&again, Method::POST, path, Some(json!({ "password": PASSWORD }))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);

    // Not a day early; then erased by the retention sweep.
    let retention = app.services.retention(&app.services.privacy_config);
    let now = modelroute_types::time::now();
    let early = retention.report(now + chrono::Duration::days(29), Some("account_deletions")).await.unwrap();
    assert_eq!(early[0].due, 0);
    let swept = retention.sweep(now + chrono::Duration::days(31), Some("account_deletions"), &mut |_| {}).await.unwrap();
    assert_eq!(swept[0].deleted, 1);

    for needle in ["bob@example.com", "Bobby Zedwards"] {
        assert_eq!(cells_holding(&app, needle).await, Vec::<String>::new(), "{needle} is still stored");
    }
    // Billing stays whole: the org's balance and the journal are as they were.
    assert_eq!(app.services.balance(&bob_org_id).await.unwrap(), balance);
    app.assert_ledger_sound().await;
    let r = app.call(Method::POST, "/v1/auth/login", &[], Some(json!({ "email": "bob@example.com", "password": PASSWORD }))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Nobody else is touched.
    assert_eq!(app.browse(&ada, Method::GET, "/v1/auth/session", None).await.status, StatusCode::OK);
    assert!(!cells_holding(&app, "ada@example.com").await.is_empty());
});
