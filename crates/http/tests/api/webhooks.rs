//! `/v1/webhook-endpoints` through the server: the secret once, a test
//! event delivered by the background and verifiable, redelivery, the
//! strict policy by default, and another org's ids out of reach.

use std::time::Duration;

use hyper::{Method, StatusCode};
use modelroute_db::db_test;
use modelroute_identity::{Actor, Scopes};
use modelroute_testkit::receiver::Receiver;
use modelroute_types::time;
use modelroute_webhooks::signature;
use serde_json::{Value, json};

use crate::helpers::TestApp;

impl TestApp {
    async fn delivered(&self, delivery: &str) -> Value {
        for _ in 0..200 {
            let d = self.get(&format!("/v1/webhook-deliveries/{delivery}")).await.json;
            if d["status"] == "delivered" {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{delivery} was not delivered");
    }
}

db_test!(async fn an_endpoint_gets_a_signed_test_event_and_a_redelivery(db) {
    let r = Receiver::start().await;
    let app = TestApp::spawn(db, |s| s.webhooks.allow_loopback = Some(true)).await;
    let created = app.post("/v1/webhook-endpoints", &json!({ "url": r.url("/ok"), "description": "mine", "event_types": ["execution.succeeded"] })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let secret = created.json["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let shown = app.get(&format!("/v1/webhook-endpoints/{id}")).await;
    assert!(!shown.body.contains(&secret) && shown.json.get("secret").is_none(), "the secret is shown once");
    assert!(!app.get("/v1/webhook-endpoints").await.body.contains(&secret));

    let sent = app.post(&format!("/v1/webhook-endpoints/{id}/test"), &Value::Null).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.body);
    let delivery = sent.json["id"].as_str().unwrap().to_owned();
    let d = app.delivered(&delivery).await;
    assert_eq!(d["attempt_log"][0]["status_code"], 200);
    assert_eq!(d["payload"]["type"], "webhook.test");
    let got = r.requests("/ok");
    assert_eq!(got.len(), 1);
    let q = &got[0];
    let now = time::unix_seconds(time::now());
    assert!(signature::verify(&secret, &q.header("webhook-id"), q.header("webhook-timestamp").parse().unwrap(), &q.body, &q.header("webhook-signature"), now, 300));

    let again = app.post(&format!("/v1/webhook-deliveries/{delivery}/redeliver"), &Value::Null).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    app.delivered(&delivery).await;
    for _ in 0..100 {
        if r.requests("/ok").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = r.requests("/ok");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"), "a redelivery is the same event");
    let listed = app.get(&format!("/v1/webhook-endpoints/{id}/deliveries")).await;
    assert_eq!(listed.json["data"][0]["id"], delivery.as_str());

    // Rotation: a new secret, shown once.
    let rotated = app.post(&format!("/v1/webhook-endpoints/{id}/rotate-secret"), &json!({ "grace_period_secs": 60 })).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_ne!(rotated.json["secret"].as_str().unwrap(), secret);
    assert_eq!(app.post(&format!("/v1/webhook-endpoints/{id}/rotate-secret"), &json!({ "grace_period_secs": 99_999_999 })).await.status, StatusCode::BAD_REQUEST);
    let patched = app.api(Method::PATCH, &format!("/v1/webhook-endpoints/{id}"), &json!({ "enabled": false })).await;
    assert_eq!((patched.status, patched.json["enabled"].as_bool()), (StatusCode::OK, Some(false)));
    let bad = app.api(Method::PATCH, &format!("/v1/webhook-endpoints/{id}"), &json!({ "event_types": ["nope"] })).await;
    assert_eq!((bad.status, bad.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("event_types")));
    let gone = app.api(Method::DELETE, &format!("/v1/webhook-endpoints/{id}"), &Value::Null).await;
    assert_eq!(gone.status, StatusCode::OK);
    assert_eq!(app.get(&format!("/v1/webhook-deliveries/{delivery}")).await.status, StatusCode::NOT_FOUND);
});

db_test!(async fn the_default_policy_refuses_the_platform_s_own_network(db) {
    let app = TestApp::spawn(db, |_| {}).await;
    for url in ["http://127.0.0.1:9/hook", "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data", "https://10.1.2.3/", "http://example.com/"] {
        let r = app.post("/v1/webhook-endpoints", &json!({ "url": url })).await;
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("url")), "{url}: {}", r.body);
    }
    assert_eq!(app.get("/v1/webhook-endpoints").await.json["data"], json!([]));
    assert_eq!(app.post("/v1/webhook-endpoints", &json!({ "url": "https://hooks.example.com/x", "colour": 1 })).await.status, StatusCode::BAD_REQUEST);
});

db_test!(async fn another_org_cannot_reach_an_endpoint_or_its_deliveries(db) {
    let r = Receiver::start().await;
    let app = TestApp::spawn(db, |s| s.webhooks.allow_loopback = Some(true)).await;
    let id = app.post("/v1/webhook-endpoints", &json!({ "url": r.url("/ok") })).await.json["id"].as_str().unwrap().to_owned();
    let delivery = app.post(&format!("/v1/webhook-endpoints/{id}/test"), &Value::Null).await.json["id"].as_str().unwrap().to_owned();
    app.delivered(&delivery).await;
    let before = app.get(&format!("/v1/webhook-endpoints/{id}")).await.json;

    let (other, _) = app.services.create_org("Other", None, &Actor::operator()).await.unwrap();
    let project = app.services.create_project(&other.id, "p", &Actor::operator()).await.unwrap();
    let (_, key) = app.services.create_key_in(&project.id, "k", &Scopes::all()).await.unwrap();
    for (method, path, body) in [
        (Method::GET, format!("/v1/webhook-endpoints/{id}"), None),
        (Method::PATCH, format!("/v1/webhook-endpoints/{id}"), Some(json!({ "url": r.url("/evil"), "enabled": false }).to_string())),
        (Method::DELETE, format!("/v1/webhook-endpoints/{id}"), None),
        (Method::POST, format!("/v1/webhook-endpoints/{id}/rotate-secret"), None),
        (Method::POST, format!("/v1/webhook-endpoints/{id}/test"), None),
        (Method::GET, format!("/v1/webhook-endpoints/{id}/deliveries"), None),
        (Method::GET, format!("/v1/webhook-deliveries/{delivery}"), None),
        (Method::POST, format!("/v1/webhook-deliveries/{delivery}/redeliver"), None),
    ] {
        let res = app.send(method.clone(), &path, Some(&key), body).await;
        assert_eq!((res.status, res.code()), (StatusCode::NOT_FOUND, "not_found"), "{method} {path}: {}", res.body);
    }
    assert_eq!(app.send(Method::GET, "/v1/webhook-endpoints", Some(&key), None).await.json["data"], json!([]));
    assert_eq!(app.get(&format!("/v1/webhook-endpoints/{id}")).await.json, before, "nothing changed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.requests("/ok").len(), 1, "no test event or redelivery went out for the other org");
});
