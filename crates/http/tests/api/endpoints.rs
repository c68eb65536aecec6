//! The HTTP API, driven through the real server on port 0, on SQLite and
//! PostgreSQL. The provider is the built-in one, configured per test.

use std::time::Duration;

use crate::helpers::{Reply, TestApp};
use diesel::sql_types::BigInt;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use hyper::{Method, StatusCode};
use modelroute_app::Settings;
use modelroute_db::testing::TestDb;
use modelroute_db::{DbConn, db_test};
use modelroute_identity::{Actor, Scopes};
use modelroute_providers::{BuiltinFailure, ProviderConfig};
use modelroute_types::Money;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn spawn(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn(db, tweak).await
}

fn builtin(settings: &mut Settings, f: impl FnOnce(&mut modelroute_providers::BuiltinConfig)) {
    let Some(ProviderConfig::Builtin(b)) = settings.providers.get_mut("builtin") else { panic!("no builtin") };
    f(b);
}

impl TestApp {
    /// The org's (available, held) balance.
    async fn balance(&self) -> (Money, Money) {
        let b = self.services.balance(&self.org).await.unwrap();
        (b.available, b.held)
    }

    async fn execution_rows(&self) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let q = "SELECT COUNT(*) AS n FROM executions";
        let rows: Vec<N> = match self.services.pool.get().await.unwrap() {
            DbConn::Postgres(mut c) => sql_query(q).load(&mut c).await.unwrap(),
            DbConn::Sqlite(mut c) => sql_query(q).load(&mut c).await.unwrap(),
        };
        rows[0].n
    }

    async fn only_execution_id(&self) -> String {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Text)]
            id: String,
        }
        let q = "SELECT id FROM executions";
        let rows: Vec<Id> = match self.services.pool.get().await.unwrap() {
            DbConn::Postgres(mut c) => sql_query(q).load(&mut c).await.unwrap(),
            DbConn::Sqlite(mut c) => sql_query(q).load(&mut c).await.unwrap(),
        };
        assert_eq!(rows.len(), 1);
        rows.into_iter().next().unwrap().id
    }
}

fn hello(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "system", "content": "be brief" }, { "role": "user", "content": "Hello there" }] })
}

fn nano(v: &Value) -> i64 {
    v["nano_usd"].as_i64().unwrap_or_else(|| panic!("no nano_usd in {v}"))
}

db_test!(async fn a_paid_completion_settles_its_actual_cost(db) {
    let app = spawn(db, |_| {}).await;
    let (before, _) = app.balance().await;
    let r = app.chat(hello("builtin/echo")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = r.json;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "builtin/echo");
    assert_eq!(body["choices"][0]["message"]["content"], "Echo: Hello there");
    assert_eq!((body["usage"]["prompt_tokens"].as_u64(), body["usage"]["completion_tokens"].as_u64()), (Some(13), Some(5)));
    let id = body["id"].as_str().unwrap();
    assert!(r.headers.contains_key("x-request-id"));

    let e = app.get(&format!("/v1/executions/{id}")).await.json;
    assert_eq!(e["status"], "succeeded");
    assert_eq!(e["hold"]["status"], "settled");
    let cost = nano(&e["cost"]);
    // Prompt: 2 messages = (2+4) + (3+4) = 13 tokens at $0.10/M; output 5 tokens at $0.40/M.
    assert_eq!(cost, 13 * 100 + 5 * 400);
    assert_eq!(nano(&e["settlement"]["charged"]) + nano(&e["settlement"]["released"]), nano(&e["hold"]["amount"]));
    assert!(e["decision"]["candidates"][0]["route"].as_str().unwrap().starts_with("rt_"));
    assert!(!e.to_string().contains("builtin-echo"), "the route's operator id leaked: {e}");
    let (after, held) = app.balance().await;
    assert_eq!((before.units() - after.units(), held), (cost, Money::ZERO));
    app.assert_ledger_sound().await;
    // Prometheus sees the request and, on SQLite, the ledger writer's batches.
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.body.contains("modelroute_http_requests_total"), "{}", metrics.body);
    if app.db.pool().backend() == modelroute_db::Backend::Sqlite {
        assert!(metrics.body.contains("sqlite_writer_batch_size"), "{}", metrics.body);
        assert!(metrics.body.contains("sqlite_writer_seconds"), "{}", metrics.body);
    }
});

db_test!(async fn with_an_operator_token_readiness_and_metrics_need_it(db) {
    let app = spawn(db, |s| s.server.operator_token = Some(modelroute_types::Secret::new("op-token-1234567890"))).await;
    for path in ["/readyz", "/metrics"] {
        let r = app.send(Method::GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.body);
        let r = app.send(Method::GET, path, Some(&app.key.clone()), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: an API key is not the operator's");
        let r = app.send(Method::GET, path, Some("op-token-1234567890"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    assert_eq!(app.send(Method::GET, "/healthz", None, None).await.status, StatusCode::OK, "liveness stays open");
});

db_test!(async fn a_streamed_completion_ends_with_done_and_settles(db) {
    let app = spawn(db, |_| {}).await;
    let mut req = hello("builtin/echo");
    req["stream"] = json!(true);
    req["stream_options"] = json!({ "include_usage": true });
    let r = app.chat(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let frames: Vec<&str> = r.body.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = frames.iter().filter(|f| **f != "data: [DONE]").map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Echo: Hello there");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    let id = chunks[0]["id"].as_str().unwrap();
    let e = app.get(&format!("/v1/executions/{id}")).await.json;
    assert_eq!((e["status"].as_str(), e["stream"].as_bool()), (Some("succeeded"), Some(true)));
    assert_eq!(nano(&e["cost"]), 13 * 100 + 5 * 400);
    app.assert_ledger_sound().await;
});

db_test!(async fn client_mistakes_are_4xx_and_leave_nothing_behind(db) {
    let app = spawn(db, |s| s.bootstrap.starting_credit = Money::from_units(50_000)).await;
    let key = app.key.clone();
    let post = |key: Option<String>, body: String| {
        let app = &app;
        async move { app.send(Method::POST, "/v1/chat/completions", key.as_deref(), Some(body)).await }
    };
    let cases: Vec<(Reply, StatusCode, &str, Option<&str>)> = vec![
        (post(None, hello("builtin/echo").to_string()).await, StatusCode::UNAUTHORIZED, "invalid_api_key", None),
        (post(Some("mr_not_a_real_key".into()), hello("builtin/echo").to_string()).await, StatusCode::UNAUTHORIZED, "invalid_api_key", None),
        (post(Some(key.clone()), hello("no/such-model").to_string()).await, StatusCode::NOT_FOUND, "model_not_found", Some("model")),
        (post(Some(key.clone()), "{not json".into()).await, StatusCode::BAD_REQUEST, "invalid_request", None),
        (post(Some(key.clone()), json!({ "model": "builtin/echo" }).to_string()).await, StatusCode::BAD_REQUEST, "invalid_request", None),
        (post(Some(key.clone()), json!({ "model": "builtin/echo", "messages": [{ "role": "wizard", "content": "x" }] }).to_string()).await, StatusCode::BAD_REQUEST, "invalid_request", Some("messages[0].role")),
        (post(Some(key.clone()), json!({ "model": "builtin/echo", "messages": [] }).to_string()).await, StatusCode::BAD_REQUEST, "invalid_request", Some("messages")),
        (post(Some(key.clone()), json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "x" }], "temperature": 7 }).to_string()).await, StatusCode::BAD_REQUEST, "invalid_request", Some("temperature")),
        // $0.00005 does not cover the worst case (1024 output tokens at $0.40/M).
        (post(Some(key.clone()), hello("builtin/echo").to_string()).await, StatusCode::PAYMENT_REQUIRED, "insufficient_balance", None),
    ];
    for (i, (reply, status, code, param)) in cases.iter().enumerate() {
        assert_eq!(reply.status, *status, "case {i}: {}", reply.body);
        let err = &reply.json["error"];
        assert_eq!(err["code"], *code, "case {i}: {}", reply.body);
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(p) = param {
            assert_eq!(err["param"], *p, "case {i}: {}", reply.body);
        }
        assert!(reply.headers.contains_key("x-request-id"), "case {i}");
    }
    assert!(cases[4].0.body.contains("messages"), "a missing field is named: {}", cases[4].0.body);
    assert_eq!(app.execution_rows().await, 0, "no half-written execution");
    assert_eq!(app.balance().await, (Money::from_units(50_000), Money::ZERO), "no hold left");
    // With max_tokens small enough the same balance suffices.
    let mut small = hello("builtin/echo");
    small["max_tokens"] = json!(16);
    assert_eq!(app.chat(small).await.status, StatusCode::OK);
    app.assert_ledger_sound().await;
});

db_test!(async fn a_failing_provider_releases_the_hold(db) {
    let app = spawn(db, |s| builtin(s, |b| b.failure = BuiltinFailure::BeforeResponse)).await;
    let before = app.balance().await;
    let r = app.chat(hello("builtin/echo")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(r.json["error"]["code"], "upstream_error");
    assert_eq!(app.balance().await, before);
    assert_eq!(app.execution_rows().await, 1, "the failed execution is recorded");
    app.assert_ledger_sound().await;
});

db_test!(async fn a_stream_cut_midway_is_not_reported_as_success_and_is_billed_for_what_it_delivered(db) {
    let app = spawn(db, |s| builtin(s, |b| b.failure = BuiltinFailure::MidStream)).await;
    let before = app.balance().await;
    let mut req = hello("builtin/echo");
    req["stream"] = json!(true);
    let r = app.chat(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("[DONE]"), "{}", r.body);
    assert!(r.body.contains("\"code\":\"upstream_error\""), "{}", r.body);
    let id = r.headers["x-modelroute-execution-id"].to_str().unwrap().to_owned();
    let e = app.get(&format!("/v1/executions/{id}")).await.json;
    // Failed, and charged for the output that reached the client (the
    // failover rule: an attempt is billed for what it delivered), no more.
    assert_eq!((e["status"].as_str(), e["hold"]["status"].as_str()), (Some("failed"), Some("settled")), "{e}");
    assert_eq!(e["error"]["code"], "upstream_error", "{e}");
    let billed = &e["decision"]["attempts"][0]["billed"];
    assert!(billed["output_tokens"].as_u64().unwrap() > 0, "{e}");
    let charged = before.0.checked_sub(app.balance().await.0).unwrap();
    assert_eq!(charged.units(), e["cost"]["nano_usd"].as_i64().unwrap());
    assert!(charged.units() > 0 && charged.units() < e["hold"]["amount"]["nano_usd"].as_i64().unwrap());
    app.assert_ledger_sound().await;
});

db_test!(async fn another_org_cannot_see_an_execution(db) {
    let app = spawn(db, |_| {}).await;
    let id = app.chat(hello("builtin/echo")).await.json["id"].as_str().unwrap().to_owned();
    let (other, _) = app.services.create_org("Other", None, &Actor::operator()).await.unwrap();
    let project = app.services.create_project(&other.id, "p", &Actor::operator()).await.unwrap();
    let (_, other_key) = app.services.create_key_in(&project.id, "k", &Scopes::all()).await.unwrap();
    let r = app.send(Method::GET, &format!("/v1/executions/{id}"), Some(&other_key), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(app.send(Method::GET, "/v1/executions/exec_nonsense", Some(&other_key), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("/v1/executions/{id}")).await.status, StatusCode::OK);
});

db_test!(async fn health_readiness_models_and_unknown_routes(db) {
    let app = spawn(db, |_| {}).await;
    assert_eq!(app.send(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    let ready = app.send(Method::GET, "/readyz", None, None).await;
    assert_eq!((ready.status, ready.json["status"].as_str()), (StatusCode::OK, Some("ready")));
    let models = app.get("/v1/models").await.json;
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["builtin/echo", "builtin/echo-large"]);
    assert_eq!(app.get("/v1/models/builtin/echo").await.json["id"], "builtin/echo");
    let missing = app.get("/v1/nothing-here").await;
    assert_eq!((missing.status, missing.json["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
});

db_test!(async fn oversized_bodies_and_half_sent_headers_are_cut_off(db) {
    let app = spawn(db, |s| {
        s.server.max_body_bytes = 1024;
        s.server.client_request_timeout_ms = 300;
    }).await;
    let mut big = hello("builtin/echo");
    big["messages"][1]["content"] = json!("x".repeat(2000));
    let r = app.chat(big).await;
    assert_eq!((r.status, r.json["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
    // Half a request head, then silence: the server must close the connection.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 5 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
});

/// Sends a request head (`Content-Length: declared`) and `first` bytes of its body.
async fn start_body(port: u16, path: &str, key: Option<&str>, declared: usize, first: &[u8]) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(first).await.unwrap();
    tcp
}

/// What the server answered on `tcp` before closing it (at most 10 s).
async fn answer_of(mut tcp: tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s: {}", String::from_utf8_lossy(&buf));
    String::from_utf8_lossy(&buf).into_owned()
}

db_test!(async fn slow_and_oversized_bodies_are_cut_off_without_starving_anyone(db) {
    let app = spawn(db, |s| {
        s.server.max_body_bytes = 64 * 1024;
        s.server.body_grace_ms = 400;
        s.server.body_min_bytes_per_sec = 4_000;
        s.server.max_pending_bodies = 2;
    })
    .await;
    let (key, port) = (app.key.clone(), app.port);
    // A Content-Length above the limit: 413 before a byte of the body is sent.
    let tcp = start_body(app.port, "/v1/chat/completions", Some(&key), 10_000_000, b"").await;
    let answer = answer_of(tcp).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Two bodies trickled a byte at a time, one without credentials (the
    // verification endpoint needs none): both take the two places...
    let trickle = |path: &'static str, key: Option<String>| async move {
        let mut tcp = start_body(port, path, key.as_deref(), 1_000, b"{").await;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tcp.write_all(b" ").await.is_err() {
                break;
            }
        }
        answer_of(tcp).await
    };
    let slow = tokio::spawn(trickle("/v1/chat/completions", Some(key.clone())));
    let anonymous = tokio::spawn(trickle("/v1/auth/verify-email", None));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // ...so a third body is refused at once, while requests without a body go on.
    let third = app.chat(hello("builtin/echo")).await;
    assert_eq!((third.status, third.json["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded")), "{}", third.body);
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/billing/balance").await.status, StatusCode::OK);
    // The trickles are cut off after the grace period: 408, connection closed.
    for answer in [slow.await.unwrap(), anonymous.await.unwrap()] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    // A large body on a good link passes: 60 KB in 10 chunks, 50 ms apart.
    let mut big = hello("builtin/echo");
    big["messages"][1]["content"] = json!("word ".repeat(12_000));
    let body = big.to_string();
    let mut tcp = start_body(app.port, "/v1/chat/completions", Some(&key), body.len(), b"").await;
    for chunk in body.as_bytes().chunks(body.len().div_ceil(10)) {
        tcp.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut head = vec![0; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    app.assert_ledger_sound().await;
});

db_test!(async fn a_full_bulkhead_answers_503_instead_of_queueing(db) {
    let app = spawn(db, |s| {
        builtin(s, |b| {
            b.latency_ms = 400;
            b.max_concurrency = 1;
        });
    })
    .await;
    let before = app.balance().await;
    let (a, b) = tokio::join!(app.chat(hello("builtin/echo")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.chat(hello("builtin/echo")).await
    });
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE, "{}", b.body);
    assert_eq!(b.json["error"]["code"], "overloaded");
    assert!(b.headers.contains_key("retry-after"));
    let e = app.get(&format!("/v1/executions/{}", a.json["id"].as_str().unwrap())).await.json;
    let charged = e["cost"]["nano_usd"].as_i64().unwrap();
    assert_eq!(before.0.units() - app.balance().await.0.units(), charged, "the refused request cost nothing");
    app.assert_ledger_sound().await;
});

db_test!(async fn a_stream_whose_client_leaves_is_canceled_and_charged_for_what_was_generated(db) {
    // actix notices a hang-up when it writes, i.e. once the answer has
    // started: the execution is canceled and charged for the prompt and the
    // output generated so far (the provider did that work), never in full.
    let app = spawn(db, |s| {
        builtin(s, |b| {
            b.latency_ms = 100;
            b.chunk_delay_ms = 300;
        });
    })
    .await;
    let before = app.balance().await;
    let body = json!({ "model": "builtin/echo", "stream": true, "messages": [{ "role": "user", "content": "one two three four five six" }] }).to_string();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.key,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let id = app.only_execution_id().await;
    let e = app.get(&format!("/v1/executions/{id}")).await.json;
    assert_eq!(e["status"], "canceled", "{e}");
    assert_eq!(e["hold"]["status"], "settled");
    let cost = nano(&e["cost"]);
    assert!(cost > 0 && cost < nano(&e["hold"]["amount"]), "{e}");
    assert!(e["usage"]["output_tokens"].as_u64().unwrap() < 9, "charged for the whole answer: {e}");
    assert_eq!(before.0.units() - app.balance().await.0.units(), cost);
    app.assert_ledger_sound().await;
});

/// A stream of `words` words, one delta each.
fn long_stream(words: usize) -> Value {
    let content = vec!["word"; words].join(" ");
    json!({ "model": "builtin/echo", "stream": true, "messages": [{ "role": "user", "content": content }] })
}

/// The streamed answer ended well: its last frames are a chunk and `[DONE]`, no error frame.
fn assert_stream_completed(r: &Reply) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!r.body.contains("\"error\""), "an error frame: {}", r.body);
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
}

db_test!(async fn a_stream_that_outlives_the_hold_timeout_keeps_its_hold_and_is_billed(db) {
    // The hold expires 2 s after it is placed or renewed, the sweeper runs
    // every second, and the stream takes about 4 s: its hold is renewed
    // under it, never released mid-stream, and settled at the end.
    let app = spawn(db, |s| {
        s.ledger.hold_timeout_secs = 2;
        s.ledger.sweep_interval_secs = 1;
        builtin(s, |b| b.chunk_delay_ms = 250);
    })
    .await;
    let before = app.balance().await;
    let r = app.chat(long_stream(16)).await;
    assert_stream_completed(&r);
    let id = app.only_execution_id().await;
    let e = app.get(&format!("/v1/executions/{id}")).await.json;
    assert_eq!((e["status"].as_str(), e["hold"]["status"].as_str()), (Some("succeeded"), Some("settled")), "{e}");
    let cost = nano(&e["cost"]);
    assert!(cost > 0, "{e}");
    assert_eq!(before.0.units() - app.balance().await.0.units(), cost, "charged exactly the settled cost");
    assert_eq!(app.balance().await.1, Money::ZERO, "nothing left held");
    app.assert_ledger_sound().await;
});

db_test!(async fn a_stream_whose_hold_lapsed_anyway_is_still_charged_for_what_it_delivered(db) {
    // Renewals can fail (a database out for longer than a lease): the hold
    // is then released under the stream. The stream still delivers; its
    // cost is charged afterwards from the balance, never beyond it.
    let app = spawn(db, |s| builtin(s, |b| b.chunk_delay_ms = 200)).await;
    let before = app.balance().await;
    let (r, ()) = tokio::join!(app.chat(long_stream(10)), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let later = modelroute_types::time::now() + chrono::Duration::days(1);
        assert_eq!(app.services.ledger.sweep_expired(later).await.unwrap(), 1, "the stream's hold lapsed");
    });
    assert_stream_completed(&r);
    let id = app.only_execution_id().await;
    let e = app.get(&format!("/v1/executions/{id}")).await.json;
    assert_eq!(e["status"], "succeeded", "{e}");
    let cost = nano(&e["cost"]);
    assert!(cost > 0, "{e}");
    assert_eq!(before.0.units() - app.balance().await.0.units(), cost);
    assert_eq!(app.balance().await.1, Money::ZERO);
    app.assert_ledger_sound().await;
});

db_test!(async fn anthropic_messages_streamed_and_not_with_anthropic_errors(db) {
    let app = spawn(db, |_| {}).await;
    let key = app.key.clone();
    let ask = |stream: bool| {
        json!({ "model": "builtin/echo", "max_tokens": 64, "stream": stream, "system": "be brief",
                "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Hello there" }] }] })
        .to_string()
    };
    let r = app.send(Method::POST, "/v1/messages", Some(&key), Some(ask(false))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let m = r.json;
    assert_eq!((m["type"].as_str(), m["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(m["content"][0], json!({ "type": "text", "text": "Echo: Hello there" }));
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!((m["usage"]["input_tokens"].as_u64(), m["usage"]["output_tokens"].as_u64()), (Some(13), Some(5)));

    let r = app.send(Method::POST, "/v1/messages", Some(&key), Some(ask(true))).await;
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events: Vec<&str> = r.body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(events[0], "message_start");
    assert_eq!(&events[events.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    let text: String = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Echo: Hello there");

    let unknown = json!({ "model": "no/such", "max_tokens": 8, "messages": [{ "role": "user", "content": "x" }] }).to_string();
    let r = app.send(Method::POST, "/v1/messages", Some(&key), Some(unknown.clone())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json["type"], "error");
    assert_eq!(r.json["error"]["type"], "not_found_error");
    let r = app.send(Method::POST, "/v1/messages", None, Some(unknown)).await;
    assert_eq!((r.status, r.json["error"]["type"].as_str()), (StatusCode::UNAUTHORIZED, Some("authentication_error")));
    let no_max = json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "x" }] }).to_string();
    let r = app.send(Method::POST, "/v1/messages", Some(&key), Some(no_max)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json["error"]["message"].as_str().unwrap().contains("max_tokens"), "{}", r.body);
    app.assert_ledger_sound().await;
});

db_test!(async fn usage_records_page_filter_export_and_stay_in_their_org(db) {
    // A flat per-request price on one model, at cost (no margin).
    let app = spawn(db, |s| {
        let large = s.catalogue.models.iter_mut().find(|m| m.slug == "builtin/echo-large").unwrap();
        large.routes[0].request_price = "0.002".parse().unwrap();
        large.routes[0].margin_bps = Some(0);
    })
    .await;
    let (before, _) = app.balance().await;
    for model in ["builtin/echo", "builtin/echo-large", "builtin/echo"] {
        assert_eq!(app.chat(hello(model)).await.status, StatusCode::OK);
    }
    let first = app.get("/v1/usage?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let first = first.json;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["has_more"], true);
    let r = &first["data"][0];
    assert_eq!(r["model"], "builtin/echo", "newest first");
    assert!(r["price_version"].as_str().unwrap().starts_with("pv_"));
    assert_eq!(r["input_price_per_mtok"], "0.100000000");
    assert_eq!(r["output_price_per_mtok"], "0.400000000");
    assert!(r["input_tokens"].as_u64().unwrap() > 0 && r["hold_id"].as_str().unwrap().starts_with("hold_"));
    assert_eq!(r["request_price"], "0.000000000");
    let settlement = r["settlement_id"].as_str().unwrap().to_owned();
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app.get(&format!("/v1/usage?limit=2&cursor={cursor}")).await.json;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["has_more"], false);
    let large = app.get("/v1/usage?model=builtin/echo-large").await.json;
    assert_eq!(large["data"].as_array().unwrap().len(), 1);
    assert_eq!(large["data"][0]["input_price_per_mtok"], "1.000000000");
    assert_eq!(large["data"][0]["request_price"], "0.002000000");
    let tokens = |k: &str| i64::try_from(large["data"][0][k].as_u64().unwrap()).unwrap();
    // Input at $1/M is 1,000 nano-USD a token; output at its price; plus the request.
    let output_nano_per_token =
        large["data"][0]["output_price_per_mtok"].as_str().unwrap().parse::<Money>().unwrap().units() / 1_000_000;
    assert_eq!(
        large["data"][0]["cost"]["nano_usd"].as_i64().unwrap(),
        tokens("input_tokens") * 1_000 + tokens("output_tokens") * output_nano_per_token + 2_000_000,
        "the request price is charged"
    );
    // The records add up to what the balance lost.
    let all = app.get("/v1/usage").await.json;
    let billed: i64 = all["data"].as_array().unwrap().iter().map(|r| r["cost"]["nano_usd"].as_i64().unwrap()).sum();
    let (after, _) = app.balance().await;
    assert_eq!(before.units() - after.units(), billed);
    // The balance shows the journal behind it: the grant, then a hold and a settlement each.
    let balance = app.get("/v1/billing/balance").await.json;
    let journal = balance["recent_journal"].as_array().unwrap();
    let kinds: Vec<&str> = journal.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["settled", "hold", "settled", "hold", "settled", "hold", "credit"]);
    let sum: i64 = journal.iter().map(|e| e["available"]["nano_usd"].as_i64().unwrap()).sum();
    assert_eq!(sum, balance["available"]["nano_usd"].as_i64().unwrap(), "the journal replays to the balance");
    assert!(journal.iter().all(|e| e["held"]["nano_usd"].as_i64().unwrap() != 0 || e["kind"] == "credit"));
    // The usage record names the entry that settled its hold.
    let settled = journal.iter().find(|e| e["id"] == settlement.as_str()).unwrap();
    assert_eq!((settled["kind"].as_str(), &settled["hold_id"]), (Some("settled"), &first["data"][0]["hold_id"]));
    // CSV: a header and the same three records.
    let csv = app.get("/v1/usage.csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines.len(), 4, "{}", csv.body);
    assert!(lines[0].starts_with("execution_id,created_at,project_id"));
    assert!(lines[0].ends_with(",hold_id,request_price_usd,settlement_id"), "{}", lines[0]);
    assert!(lines[1].ends_with(&format!(",0.000000000,{settlement}")), "{}", lines[1]);
    assert!(lines[1].contains(",builtin/echo,") && lines[1].contains(",succeeded,"));
    // A time range that ends before them, and bad filters.
    assert_eq!(app.get("/v1/usage?to=2020-01-01T00:00:00Z").await.json["data"].as_array().unwrap().len(), 0);
    let bad = app.get("/v1/usage?from=yesterday").await;
    assert_eq!((bad.status, bad.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("from")));
    assert_eq!(app.get("/v1/usage?limit=0").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/v1/usage?colour=red").await.status, StatusCode::BAD_REQUEST);
    // Another org sees none of it.
    let (other, _) = app.services.create_org("Other", None, &Actor::operator()).await.unwrap();
    let project = app.services.create_project(&other.id, "p", &Actor::operator()).await.unwrap();
    let (_, other_key) = app.services.create_key_in(&project.id, "k", &Scopes::all()).await.unwrap();
    let theirs = app.send(Method::GET, "/v1/usage", Some(&other_key), None).await.json;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0);
});

db_test!(async fn the_audit_log_records_who_did_what_and_cannot_be_rewritten(db) {
    let app = spawn(db, |_| {}).await;
    // The bootstrap was done by the operator.
    let all = app.get("/v1/audit-events").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let actions: Vec<String> =
        all.json["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    // The org and its default project are one use case: one event, naming both.
    assert_eq!(actions, ["credits.granted", "api_key.created", "org.created"], "newest first");
    let created = &all.json["data"][2];
    let project = app.services.identity.projects(&app.org).await.unwrap().remove(0);
    assert_eq!((created["actor"].as_str(), created["details"]["project"].as_str()), (Some("operator"), Some(project.id.as_str())));
    // An administrative change through the API names the key, the address and the request.
    let put = app
        .send(Method::PUT, "/v1/routing/preferences", Some(&app.key.clone()), Some(json!({ "policy": "fastest" }).to_string()))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    let request_id = put.headers["x-request-id"].to_str().unwrap().to_owned();
    let found = app.get("/v1/audit-events?action=routing.preferences_updated").await.json;
    let events = found["data"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert!(e["actor"].as_str().unwrap().starts_with("key_"));
    assert_eq!(e["ip"], "127.0.0.1");
    assert_eq!(e["request_id"], request_id.as_str());
    assert_eq!(e["details"]["policy"], "fastest");
    // Pages and filters.
    let page = app.get("/v1/audit-events?limit=2").await.json;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let next = page["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("/v1/audit-events?cursor={next}")).await.json;
    assert_eq!(rest["data"].as_array().unwrap().len(), 2);
    assert_eq!(app.get("/v1/audit-events?from=nope").await.status, StatusCode::BAD_REQUEST);
    // Another org sees none of it; a key without the manage scope sees nothing at all.
    let (other, _) = app.services.create_org("Other", None, &Actor::operator()).await.unwrap();
    let project = app.services.create_project(&other.id, "p", &Actor::operator()).await.unwrap();
    let (_, other_key) = app.services.create_key_in(&project.id, "k", &Scopes::all()).await.unwrap();
    let theirs = app.send(Method::GET, "/v1/audit-events", Some(&other_key), None).await.json;
    let their_actions: Vec<&str> = theirs["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(their_actions, ["api_key.created", "project.created", "org.created"]);
    let (_, reader) = app.services.create_key_in(&project.id, "r", &"read".parse().unwrap()).await.unwrap();
    assert_eq!(app.send(Method::GET, "/v1/audit-events", Some(&reader), None).await.status, StatusCode::FORBIDDEN);
    // Append-only, by the database itself.
    for sql in ["UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events"] {
        let refused = match app.services.pool.get().await.unwrap() {
            DbConn::Postgres(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, sql).await,
            DbConn::Sqlite(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, sql).await,
        };
        assert!(refused.unwrap_err().to_string().contains("append-only"), "{sql}");
    }
});

db_test!(async fn keys_are_listed_created_once_and_revoked_within_their_org(db) {
    let app = spawn(db, |_| {}).await;
    let listed = app.get("/v1/keys").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let listed = listed.json;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains("token") && !listed.to_string().contains("hmac"), "{listed}");
    let project = listed["data"][0]["project_id"].as_str().unwrap().to_owned();
    let create = |body: Value| app.send(Method::POST, "/v1/keys", Some(&app.key), Some(body.to_string()));
    let created = create(json!({ "project_id": project, "name": "reader", "scopes": ["read"] })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let created = created.json;
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with(created["prefix"].as_str().unwrap()));
    // It reads, but may not execute.
    assert_eq!(app.send(Method::GET, "/v1/billing/balance", Some(&token), None).await.status, StatusCode::OK);
    let denied = app.send(Method::POST, "/v1/chat/completions", Some(&token), Some(hello("builtin/echo").to_string())).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/v1/keys").await.json["data"].as_array().unwrap().len(), 2);
    // Bad input names the field and writes nothing.
    let bad = create(json!({ "project_id": project, "name": "x", "scopes": ["root"] })).await;
    assert_eq!((bad.status, bad.json["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("scopes")));
    let past = create(json!({ "project_id": project, "name": "x", "scopes": ["read"], "expires_at": "2020-01-01T00:00:00Z" })).await;
    assert_eq!(past.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/v1/keys").await.json["data"].as_array().unwrap().len(), 2);
    // Another org can neither use our project nor touch our keys: 404, not 403.
    let (other, _) = app.services.create_org("Other", None, &Actor::operator()).await.unwrap();
    let their_project = app.services.create_project(&other.id, "p", &Actor::operator()).await.unwrap();
    let (_, theirs) = app.services.create_key_in(&their_project.id, "k", &Scopes::all()).await.unwrap();
    let body = json!({ "project_id": project, "name": "sneaky", "scopes": ["read"] }).to_string();
    assert_eq!(app.send(Method::POST, "/v1/keys", Some(&theirs), Some(body)).await.status, StatusCode::NOT_FOUND);
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/keys/{id}");
    assert_eq!(app.send(Method::DELETE, &path, Some(&theirs), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.send(Method::GET, "/v1/keys", Some(&theirs), None).await.json["data"].as_array().unwrap().len(), 1);
    // Revoked: refused at once, and audited.
    assert_eq!(app.send(Method::DELETE, &path, Some(&app.key), None).await.status, StatusCode::OK);
    assert_eq!(app.send(Method::GET, "/v1/billing/balance", Some(&token), None).await.status, StatusCode::UNAUTHORIZED);
    let audit = app.get("/v1/audit-events?action=api_key.revoked").await.json;
    assert_eq!(audit["data"][0]["target"], id);
    assert!(audit["data"][0]["actor"].as_str().unwrap().starts_with("key_"));
});

db_test!(async fn executions_are_listed_newest_first_with_filters_and_only_for_their_org(db) {
    let app = spawn(db, |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.chat(hello("builtin/echo")).await.json["id"].as_str().unwrap().to_owned());
    }
    let failed = app.chat(json!({ "model": "builtin/echo", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 100_000_000 })).await;
    assert!(failed.status.is_client_error() || failed.status.is_server_error());
    let page = app.get("/v1/executions?limit=2").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let got: Vec<&str> = page.json["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()], "newest first");
    let cursor = page.json["next_cursor"].as_str().unwrap().to_owned();
    let next = app.get(&format!("/v1/executions?limit=2&cursor={cursor}")).await;
    assert_eq!(next.json["data"][0]["id"], ids[0].as_str());
    let succeeded = app.get("/v1/executions?status=succeeded,failed&model=builtin/echo").await;
    assert_eq!(succeeded.json["data"].as_array().unwrap().len(), 3);
    assert!(succeeded.json["data"].as_array().unwrap().iter().all(|e| e["status"] == "succeeded"));
    assert_eq!(app.get("/v1/executions?status=running").await.json["data"], json!([]));
    for bad in ["status=exploded", "limit=0", "limit=101", "cursor=nope", "project_id=x", "from=yesterday", "colour=red"] {
        let r = app.get(&format!("/v1/executions?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    let (other, _) = app.services.create_org("Other", None, &Actor::operator()).await.unwrap();
    let project = app.services.create_project(&other.id, "p", &Actor::operator()).await.unwrap();
    let (_, other_key) = app.services.create_key_in(&project.id, "k", &Scopes::all()).await.unwrap();
    let theirs = app.send(Method::GET, "/v1/executions", Some(&other_key), None).await;
    assert_eq!(theirs.json["data"], json!([]), "another org sees none of them");
});
