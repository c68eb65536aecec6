//! `POST /v1/executions` through the server and its background, against the
//! Replicate stand-in: submitted, given to the provider with a callback
//! URL, called back (or polled when the callback is lost), its output
//! re-hosted, its webhook delivered signed; doubled, forged, stale and
//! replayed callbacks changing nothing; idempotency keys, `Prefer: wait`,
//! cancel, and the outbound policy on webhook URLs.

use std::time::Duration;

use hyper::{Method, StatusCode};
use modelroute_db::db_test;
use modelroute_providers::{ProviderConfig, ReplicateConfig};
use modelroute_routing::ModelConfig;
use modelroute_testkit::receiver::{Receiver, reference_verify};
use modelroute_testkit::replicate::{ReplicateStandIn, WEBHOOK_SECRET, output_png, sign};
use modelroute_types::{Money, Secret, time};
use modelroute_webhooks::signature;
use serde_json::{Value, json};

use crate::helpers::{TestApp, route};

/// One cent a prediction, nothing per token.
const PREDICTION_PRICE: i64 = 10_000_000;

/// A server whose catalogue has `acme/<name>` image models served by the
/// Replicate stand-in (one per fault), polled after a second.
async fn app_with(db: modelroute_db::testing::TestDb, standin: &ReplicateStandIn) -> TestApp {
    let app = TestApp::spawn(db, |s| {
        let mut config = ReplicateConfig::new(
            standin.base_url(),
            Secret::new(modelroute_testkit::TEST_KEY),
            Secret::new(WEBHOOK_SECRET),
        );
        config.poll_after_secs = 1;
        config.poll_every_secs = 1;
        config.output_hosts = vec![standin.files_host()];
        s.providers.insert("rep".into(), ProviderConfig::Replicate(config));
        for name in ["flux", "fault-no-callback", "fault-twice", "fault-forged", "fault-fail", "fault-out-of-order"] {
            let mut r = route(&format!("rep-{name}"), "rep", &format!("acme/{name}"), "0", "0");
            r.request_price = Money::from_units(PREDICTION_PRICE);
            r.streaming = false;
            s.catalogue.models.push(ModelConfig {
                slug: format!("acme/{name}"),
                description: String::new(),
                context_window: 100_000,
                routes: vec![r],
            });
        }
        s.webhooks.allow_loopback = Some(true);
        s.files.rehost.allow_http = true;
        s.executions.orphan_sweep_secs = 1;
    })
    .await;
    app.services.executor.set_callback_base(&format!("http://127.0.0.1:{}", app.port));
    app
}

impl TestApp {
    /// Polls an execution until it has ended.
    async fn ended(&self, id: &str) -> Value {
        for _ in 0..400 {
            let e = self.execution(id).await;
            if !matches!(e["status"].as_str(), Some("queued" | "running")) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{id} did not end: {}", self.execution(id).await);
    }

    /// `(outcome, verified)` of every callback recorded for `execution`, oldest first.
    async fn callbacks(&self, execution: &str) -> Vec<(String, bool)> {
        use diesel::{ExpressionMethods as _, QueryDsl as _};
        use diesel_async::RunQueryDsl as _;
        use modelroute_db::schema::provider_callbacks as c;
        let pool = &self.services.pool;
        let load = async {
            Ok::<_, modelroute_db::DbError>(modelroute_db::db_run!(pool, |conn| c::table
                .filter(c::execution_id.eq(execution))
                .order(c::received_at.asc())
                .select((c::outcome, c::verified))
                .load::<(String, bool)>(conn)
                .await)?)
        };
        load.await.unwrap()
    }

    async fn callback(&self, url: &str, id: &str, timestamp: i64, signature: &str, body: &str) -> StatusCode {
        let headers = [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature.to_owned()),
        ];
        self.request(Method::POST, url, &headers, body.to_owned()).await.status
    }
}

db_test!(async fn a_submission_is_called_back_rehosted_settled_and_its_webhook_delivered(db) {
    let standin = ReplicateStandIn::start().await;
    let receiver = Receiver::start().await;
    let app = app_with(db, &standin).await;
    let before = app.available().await;
    let body = json!({
        "model": "acme/flux",
        "input": { "prompt": "a lighthouse", "duration_ms": 50 },
        "webhook": receiver.url("/ok"),
        "webhook_events_filter": ["execution.started", "execution.succeeded"],
    });
    let r = app.post("/v1/executions", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.location(), format!("/v1/executions/{}", r.json["id"].as_str().unwrap()));
    assert_eq!(r.json["status"], "queued");
    assert_eq!(r.json["mode"], "async");
    assert_eq!(r.json["hold"]["status"], "held");
    let secret = r.json["webhook_secret"].as_str().expect("the webhook's secret, shown once").to_owned();
    let id = r.json["id"].as_str().unwrap().to_owned();

    let e = app.ended(&id).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["hold"]["status"], "settled");
    let file = &e["output"]["files"][0];
    let link = file["url"].as_str().unwrap();
    assert!(file["file_id"].as_str().unwrap().starts_with("file_"));
    let text = e.to_string();
    assert!(!text.contains(&standin.files_host()) && !text.contains(&secret), "never a provider URL, nor the secret: {text}");
    let path = format!("/v1/{}", link.split_once("/v1/").unwrap().1);
    let got = app.request(Method::GET, &path, &[], "").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_bytes(), String::from_utf8_lossy(&output_png()).as_bytes());
    assert_eq!(before.checked_sub(app.available().await).unwrap(), Money::from_units(PREDICTION_PRICE));
    assert_eq!(app.callbacks(&id).await.iter().filter(|(o, _)| o == "applied").count(), 1);

    // The webhook: the wanted events, signed with the secret shown once.
    for _ in 0..200 {
        if receiver.requests("/ok").len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got = receiver.requests("/ok");
    let types: Vec<String> = got.iter().map(|q| serde_json::from_slice::<Value>(&q.body).unwrap()["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(types, ["execution.started", "execution.succeeded"]);
    let now = time::unix_seconds(time::now());
    for q in &got {
        assert!(signature::verify(&secret, &q.header("webhook-id"), q.header("webhook-timestamp").parse().unwrap(), &q.body, &q.header("webhook-signature"), now, 300));
    }
    reference_verify(&secret, &got[1]).await;
    let done: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(done["data"]["id"], id.as_str());
    assert!(done["data"]["output_files"][0]["url"].as_str().unwrap().contains("/v1/files/"));
    let e = app.execution(&id).await;
    assert_eq!(e["webhook"]["deliveries"]["delivered"], 2, "{e}");

    // A second submission naming the same URL shares its endpoint: no new secret.
    let again = app.post("/v1/executions", &json!({ "model": "acme/flux", "input": { "prompt": "x" }, "webhook": receiver.url("/ok") })).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.json.get("webhook_secret").is_none());
    app.ended(again.json["id"].as_str().unwrap()).await;
    app.assert_ledger_sound().await;
});

db_test!(async fn lost_doubled_and_forged_callbacks_end_each_execution_once(db) {
    let standin = ReplicateStandIn::start().await;
    let app = app_with(db, &standin).await;
    let before = app.available().await;
    let mut ids = Vec::new();
    for model in ["acme/fault-no-callback", "acme/fault-twice", "acme/fault-forged", "acme/fault-out-of-order"] {
        let r = app.post("/v1/executions", &json!({ "model": model, "input": { "prompt": "p", "duration_ms": 30 } })).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.push((model, r.json["id"].as_str().unwrap().to_owned()));
    }
    for (model, id) in &ids {
        let e = app.ended(id).await;
        assert_eq!(e["status"], "succeeded", "{model}: {e}");
        assert_eq!(e["cost"]["nano_usd"], PREDICTION_PRICE, "{model}: billed once: {e}");
        let outcomes = app.callbacks(id).await;
        match *model {
            // Only polling found the end.
            "acme/fault-no-callback" => assert!(outcomes.iter().all(|(o, _)| o != "applied"), "{outcomes:?}"),
            // Two completed callbacks: one applied, the other changed nothing.
            "acme/fault-twice" => {
                for _ in 0..100 {
                    if app.callbacks(id).await.len() >= 3 { break; }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                let outcomes = app.callbacks(id).await;
                let applied = outcomes.iter().filter(|(o, _)| o == "applied").count();
                assert!(applied <= 1, "{outcomes:?}");
                assert!(outcomes.iter().any(|(o, _)| o == "ignored"), "{outcomes:?}");
            }
            // Signed with another secret: refused, unverified; polling ended it.
            "acme/fault-forged" => {
                assert!(outcomes.iter().all(|(o, v)| o == "forged" && !v), "{outcomes:?}");
                assert!(!outcomes.is_empty());
            }
            _ => {}
        }
    }
    let spent = before.checked_sub(app.available().await).unwrap();
    assert_eq!(spent, Money::from_units(PREDICTION_PRICE * 4));
    app.assert_ledger_sound().await;
});

db_test!(async fn replayed_stale_forged_and_unknown_callbacks_are_refused_and_change_nothing(db) {
    let standin = ReplicateStandIn::start().await;
    let app = app_with(db, &standin).await;
    let r = app.post("/v1/executions", &json!({ "model": "acme/flux", "input": { "prompt": "p", "duration_ms": 20 } })).await;
    let id = r.json["id"].as_str().unwrap().to_owned();
    let done = app.ended(&id).await;
    let balance = app.available().await;
    let sent = standin.sent_webhooks();
    let completed = sent.iter().rev().find(|w| w.body.contains("\"succeeded\"")).expect("the completed callback");
    let path = completed.url.clone();
    let now = time::unix_seconds(time::now());

    // The real callback again: its webhook-id was seen.
    let replayed = app.callback(&path, &completed.id, completed.timestamp, &completed.signature, &completed.body).await;
    assert_eq!(replayed, StatusCode::CONFLICT);
    // Correctly signed, but five minutes and more old.
    let old = now - 301;
    let stale = app.callback(&path, "msg_stale", old, &sign(WEBHOOK_SECRET, "msg_stale", old, completed.body.as_bytes()), &completed.body).await;
    assert_eq!(stale, StatusCode::UNAUTHORIZED);
    // Signed with a secret that is not the provider's, with a changed body.
    let failed = completed.body.replace("\"succeeded\"", "\"failed\"");
    let forged_sig = sign("whsec_Zm9yZ2VkIHNpZ25pbmcga2V5IG9mIGFuIGF0dGFja2VyIQ==", "msg_forged", now, failed.as_bytes());
    assert_eq!(app.callback(&path, "msg_forged", now, &forged_sig, &failed).await, StatusCode::UNAUTHORIZED);
    // The provider's signature over the original body, with the body changed.
    assert_eq!(app.callback(&path, &completed.id, completed.timestamp, &completed.signature, &failed).await, StatusCode::UNAUTHORIZED);
    // A token that was never issued, and another provider's name with the right token.
    let unknown = format!("/v1/callbacks/rep/{}", "0".repeat(64));
    let fresh_sig = sign(WEBHOOK_SECRET, "msg_new", now, completed.body.as_bytes());
    assert_eq!(app.callback(&unknown, "msg_new", now, &fresh_sig, &completed.body).await, StatusCode::NOT_FOUND);
    let token = path.rsplit('/').next().unwrap();
    assert_eq!(app.callback(&format!("/v1/callbacks/builtin/{token}"), "msg_new", now, &fresh_sig, &completed.body).await, StatusCode::NOT_FOUND);
    // Missing headers.
    let bare = app.request(Method::POST, &path, &[], completed.body.clone()).await;
    assert_eq!(bare.status, StatusCode::BAD_REQUEST, "{}", bare.body);

    let without_links = |mut e: Value| {
        e["output"]["files"][0]["expires_at"] = Value::Null;
        e["output"]["files"][0]["url"] = Value::Null;
        e
    };
    assert_eq!(without_links(app.execution(&id).await), without_links(done), "nothing changed");
    assert_eq!(app.available().await, balance);
    let outcomes: Vec<String> = app.callbacks(&id).await.into_iter().map(|(o, _)| o).collect();
    for expected in ["applied", "replayed", "stale", "forged", "invalid"] {
        assert!(outcomes.iter().any(|o| o == expected), "{expected} in {outcomes:?}");
    }
});

db_test!(async fn a_failed_prediction_is_not_billed_and_a_cancel_stops_the_provider(db) {
    let standin = ReplicateStandIn::start().await;
    let app = app_with(db, &standin).await;
    let before = app.available().await;
    let r = app.post("/v1/executions", &json!({ "model": "acme/fault-fail", "input": { "prompt": "p", "duration_ms": 20 } })).await;
    let e = app.ended(r.json["id"].as_str().unwrap()).await;
    assert_eq!((e["status"].as_str(), e["error"]["code"].as_str()), (Some("failed"), Some("upstream_error")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("CUDA out of memory"));
    assert_eq!(app.available().await, before);

    // A long prediction canceled while it runs: the provider is told.
    let r = app.post("/v1/executions", &json!({ "model": "acme/flux", "input": { "prompt": "p", "duration_ms": 20000 } })).await;
    let id = r.json["id"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        if app.execution(&id).await["status"] == "running" && standin.counts().0 >= 2 { break; }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let c = app.post(&format!("/v1/executions/{id}/cancel"), &Value::Null).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    let e = app.ended(&id).await;
    assert_eq!(e["status"], "canceled", "{e}");
    assert_eq!(standin.counts().1, 1, "the provider was asked to cancel");
    app.assert_ledger_sound().await;
});

db_test!(async fn idempotency_keys_wait_and_webhook_urls_through_the_api(db) {
    let standin = ReplicateStandIn::start().await;
    let app = app_with(db, &standin).await;
    let submit = |body: Value, key: &str, prefer: Option<&str>| {
        let mut headers = vec![("authorization", format!("Bearer {}", app.key)), ("idempotency-key", key.to_owned())];
        if let Some(p) = prefer {
            headers.push(("prefer", p.to_owned()));
        }
        let app = &app;
        async move { app.request(Method::POST, "/v1/executions", &headers, body.to_string()).await }
    };
    let body = json!({ "model": "acme/flux", "input": { "prompt": "p", "duration_ms": 50 } });
    // Prefer: wait answers at the end.
    let first = submit(body.clone(), "key-1", Some("wait=10")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.json["status"], "succeeded", "{}", first.body);
    // The same key and body (keys reordered): the same execution.
    let reordered = json!({ "input": { "duration_ms": 50, "prompt": "p" }, "model": "acme/flux" });
    let again = submit(reordered, "key-1", None).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.json["id"], first.json["id"]);
    // Another body: refused.
    let other = submit(json!({ "model": "acme/flux", "input": { "prompt": "q" } }), "key-1", None).await;
    assert_eq!((other.status, other.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict"));

    // Client mistakes: named, and nothing written.
    let count = || async { app.get("/v1/executions?limit=100").await.json["data"].as_array().unwrap().len() };
    let n = count().await;
    for (bad, param) in [
        (json!({ "model": "acme/flux", "input": "text" }), "input"),
        (json!({ "model": "acme/flux" }), "messages"),
        (json!({ "model": "acme/flux", "input": {}, "messages": [] }), "input"),
        (json!({ "model": "acme/flux", "input": {}, "deadline": 0 }), "deadline"),
        (json!({ "model": "acme/flux", "input": {}, "deadline": 999_999 }), "deadline"),
        (json!({ "model": "acme/flux", "input": {}, "webhook": "ftp://x" }), "webhook"),
        (json!({ "model": "acme/flux", "input": {}, "webhook": "http://127.0.0.1:9/x", "webhook_events_filter": ["execution.exploded"] }), "webhook_events_filter"),
    ] {
        let r = app.post("/v1/executions", &bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert_eq!(r.json["error"]["param"], param, "{bad}: {}", r.body);
    }
    let r = app.post("/v1/executions", &json!({ "model": "acme/unknown", "input": {} })).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let bad_wait = submit(body.clone(), "key-2", Some("wait=61")).await;
    assert_eq!(bad_wait.status, StatusCode::BAD_REQUEST);
    assert_eq!(count().await, n);
});

db_test!(async fn webhook_urls_into_the_platform_s_network_are_refused_in_production_mode(db) {
    let app = TestApp::spawn(db, |s| s.webhooks.allow_loopback = Some(false)).await;
    for url in ["https://127.0.0.1/hook", "https://169.254.169.254/latest", "https://10.0.0.5/hook", "https://[::1]/hook", "http://example.com/hook"] {
        let r = app.post("/v1/executions", &json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "hi" }], "webhook": url })).await;
        assert_eq!((r.status, r.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("webhook")), "{url}: {}", r.body);
    }
    assert_eq!(app.available().await, app.services.balance(&app.org).await.unwrap().available);
});

db_test!(async fn a_chat_submission_runs_on_the_queue_and_another_org_cannot_touch_it(db) {
    let app = TestApp::spawn(db, |_| {}).await;
    let r = app.post("/v1/executions", &json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "hello queue" }] })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let e = app.ended(&id).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert!(e["output"]["text"].as_str().unwrap().contains("hello queue"), "{e}");
    let listed = app.get("/v1/executions?status=succeeded").await;
    assert!(listed.json["data"].as_array().unwrap().iter().any(|x| x["id"] == id.as_str()));

    let other_key = app.other_key().await;
    let theirs = app.send(Method::POST, &format!("/v1/executions/{id}/cancel"), Some(&other_key), None).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let theirs = app.send(Method::GET, &format!("/v1/executions/{id}"), Some(&other_key), None).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(app.execution(&id).await, e, "nothing changed");
});
