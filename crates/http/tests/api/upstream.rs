//! Executions against a real HTTP upstream: a local server that speaks
//! OpenAI's chat-completions wire format (bodies, SSE, error bodies) and
//! checks the bearer key, behind the production OpenAI-compatible adapter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hyper::StatusCode;
use modelroute_app::{Services, Settings};
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_providers::{HttpConfig, ProviderConfig};
use modelroute_routing::{ModelConfig, RouteConfig};
use modelroute_types::{Money, OrgId, Secret};
use serde_json::{Value, json};

const UPSTREAM_KEY: &str = "sk-test-upstream-key";

/// Calls per upstream model name.
type Calls = Arc<Mutex<HashMap<String, usize>>>;

/// Whether the `flappy` upstream model is answering.
type Switch = Arc<AtomicBool>;

async fn upstream(
    req: HttpRequest,
    body: web::Json<Value>,
    calls: web::Data<Calls>,
    up: web::Data<Switch>,
) -> HttpResponse {
    if req.headers().get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {UPSTREAM_KEY}")) {
        return HttpResponse::Unauthorized()
            .json(json!({ "error": { "message": "Incorrect API key provided", "type": "invalid_request_error" } }));
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    *calls.lock().unwrap().entry(model.clone()).or_default() += 1;
    let stream = body["stream"].as_bool().unwrap_or(false);
    let model = if model == "flappy" {
        if up.load(Ordering::SeqCst) { "ok".to_owned() } else { "down".to_owned() }
    } else {
        model
    };
    let nth = calls.lock().unwrap().get(&model).copied().unwrap_or(0);
    // `busy-once`: 503 with Retry-After: 1 on the first call; `busy-twice`: 503 without it, twice.
    if (model == "busy-once" && nth == 1) || (model == "busy-twice" && nth <= 2) {
        let mut r = HttpResponse::ServiceUnavailable();
        if model == "busy-once" {
            r.insert_header(("retry-after", "1"));
        }
        return r.json(
            json!({ "error": { "message": "The server is overloaded or not ready yet.", "type": "server_error" } }),
        );
    }
    let model = if model.starts_with("busy-") { "ok".to_owned() } else { model };
    match model.as_str() {
        "down" => HttpResponse::ServiceUnavailable()
            .json(json!({ "error": { "message": "The server is overloaded or not ready yet.", "type": "server_error" } })),
        "reject" => HttpResponse::BadRequest().json(json!({ "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded" } })),
        "ok" if !stream => HttpResponse::Ok().json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "ok",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Hi from upstream" }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14 } })),
        "ok" | "cut" => {
            let chunk = |delta: Value, finish: Value| {
                format!("data: {}\n\n", json!({ "id": "c", "object": "chat.completion.chunk", "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] }))
            };
            let mut sse = chunk(json!({ "role": "assistant", "content": "" }), Value::Null);
            sse += &chunk(json!({ "content": "Hi from" }), Value::Null);
            if model == "ok" {
                sse += &chunk(json!({ "content": " upstream" }), Value::Null);
                sse += &chunk(json!({}), json!("stop"));
                sse += &format!("data: {}\n\n", json!({ "id": "c", "choices": [], "usage": { "prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14 } }));
                sse += "data: [DONE]\n\n";
            }
            HttpResponse::Ok().content_type("text/event-stream").body(sse)
        }
        _ => HttpResponse::NotFound().json(json!({ "error": { "message": "no such model", "type": "invalid_request_error" } })),
    }
}

fn start_upstream() -> (u16, Calls, Switch) {
    let calls: Calls = Arc::default();
    let switch: Switch = Arc::new(AtomicBool::new(false));
    let data = web::Data::new(Arc::clone(&calls));
    let up = web::Data::new(Arc::clone(&switch));
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).app_data(up.clone()).route("/v1/chat/completions", web::post().to(upstream))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    (port, calls, switch)
}

fn route(id: &str, provider: &str, upstream: &str) -> RouteConfig {
    crate::helpers::route(id, provider, upstream, "1", "2")
}

struct TestApp {
    port: u16,
    key: String,
    org: OrgId,
    services: Services,
    calls: Calls,
    flappy_up: Switch,
    _db: TestDb,
}

async fn spawn(db: TestDb) -> TestApp {
    spawn_with(db, |_| {}).await
}

async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let (upstream_port, calls, flappy_up) = start_upstream();
    let mut settings = crate::helpers::test_settings(&db);
    let openai = HttpConfig {
        base_url: format!("http://127.0.0.1:{upstream_port}/v1"),
        api_key: Secret::new(UPSTREAM_KEY),
        timeout_ms: 5_000,
        stream_idle_timeout_ms: 5_000,
        max_concurrency: 64,
    };
    settings.providers.insert("upstream-a".into(), ProviderConfig::OpenaiCompatible(openai.clone()));
    settings.providers.insert("upstream-b".into(), ProviderConfig::OpenaiCompatible(openai));
    let model = |slug: &str, routes: Vec<RouteConfig>| ModelConfig {
        slug: slug.into(),
        description: String::new(),
        context_window: 8192,
        routes,
    };
    settings.catalogue.models = vec![
        model("acme/chat", vec![route("a-primary", "upstream-a", "down"), route("b-secondary", "upstream-b", "ok")]),
        model(
            "acme/strict",
            vec![route("s-primary", "upstream-a", "reject"), route("s-secondary", "upstream-b", "ok")],
        ),
        model("acme/cut", vec![route("c-only", "upstream-a", "cut")]),
        model("acme/busy-once", vec![route("bo-only", "upstream-a", "busy-once")]),
        model("acme/busy-twice", vec![route("bt-only", "upstream-a", "busy-twice")]),
        model(
            "acme/flappy",
            vec![route("f-primary", "upstream-a", "flappy"), route("f-secondary", "upstream-b", "ok")],
        ),
    ];
    settings.routing.breaker = modelroute_routing::BreakerConfig {
        window: 4,
        minimum_calls: 2,
        failure_rate_percent: 50,
        open_ms: 300,
        half_open_probes: 1,
    };
    // These tests count upstream calls per route: one call per route unless a test asks for retries.
    settings.routing.retry.attempts_per_route = 1;
    tweak(&mut settings);
    let (port, services, _, boot) = crate::helpers::start_instance(settings).await;
    let boot = boot.unwrap();
    TestApp { port, key: boot.token, org: boot.org.id, services, calls, flappy_up, _db: db }
}

impl TestApp {
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        crate::helpers::call(self.port, &self.key, method, path, body.as_ref()).await
    }

    /// The execution record behind a chat-completion answer.
    async fn execution_of(&self, answer: &str) -> Value {
        let id = serde_json::from_str::<Value>(answer).unwrap()["id"].as_str().unwrap().to_owned();
        let (_, e) = self.send("GET", &format!("/v1/executions/{id}"), None).await;
        serde_json::from_str(&e).unwrap()
    }

    fn calls(&self, model: &str) -> usize {
        self.calls.lock().unwrap().get(model).copied().unwrap_or(0)
    }

    fn public_route(&self, slug: &str, index: usize) -> String {
        crate::helpers::public_route(&self.services, slug, index)
    }

    async fn available(&self) -> Money {
        crate::helpers::available(&self.services, &self.org).await
    }
}

fn ask(model: &str, stream: bool) -> Value {
    json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": "Hello" }] })
}

db_test!(async fn a_failing_route_falls_back_with_one_hold_and_one_settlement(db) {
    let app = spawn(db).await;
    let before = app.available().await;
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/chat", false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hi from upstream");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!((app.calls("down"), app.calls("ok")), (1, 1));

    let id = body["id"].as_str().unwrap();
    let (_, e) = app.send("GET", &format!("/v1/executions/{id}"), None).await;
    let e: Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["route"], app.public_route("acme/chat", 1), "the execution names the route that served it");
    let attempts = e["decision"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{e}");
    // A 503 is `overloaded` by the built-in error-mapping rules.
    assert_eq!((attempts[0]["outcome"].as_str(), attempts[0]["error_code"].as_str()), (Some("failed"), Some("overloaded")));
    assert_eq!(attempts[1]["outcome"], "succeeded");
    // Billed once, at the serving route's prices: 11 × $1/M + 3 × $2/M.
    let cost = 11 * 1_000 + 3 * 2_000;
    assert_eq!(e["cost"]["nano_usd"], cost);
    assert_eq!(before.units() - app.available().await.units(), cost);
    let report = app.services.verify_ledger().await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    // Bootstrap credit + one hold + one settlement: no second hold for the fallback.
    assert_eq!(report.entries, 3);
    assert!(!e.to_string().contains("upstream-b") && !e.to_string().contains("127.0.0.1"), "provider leaked: {e}");
});

db_test!(async fn a_rejected_request_is_not_retried_elsewhere(db) {
    let app = spawn(db).await;
    let before = app.available().await;
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/strict", false))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("maximum context length"), "{body}");
    assert_eq!((app.calls("reject"), app.calls("ok")), (1, 0));
    assert_eq!(app.available().await, before);
});

db_test!(async fn streams_fall_back_before_the_first_byte_and_cut_streams_fail(db) {
    let app = spawn(db).await;
    let before = app.available().await;
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/chat", true))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let text: String = body
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|f| *f != "[DONE]")
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hi from upstream");
    assert_eq!(before.units() - app.available().await.units(), 11 * 1_000 + 3 * 2_000);

    let before = app.available().await;
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/cut", true))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("[DONE]") && body.contains("upstream_error"), "{body}");
    assert_eq!(app.available().await, before, "a cut stream is not billed as a completion");
});

db_test!(async fn a_flapping_primary_opens_its_breaker_then_returns(db) {
    let app = spawn(db).await;
    let primary = app.public_route("acme/flappy", 0);
    // Two failures of two calls: the primary's breaker opens.
    for _ in 0..2 {
        let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/flappy", false))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(app.calls("flappy"), 2);
    // Open: served from the fallback without calling the primary.
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/flappy", false))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.calls("flappy"), 2, "an open breaker must not call the route");
    let e = app.execution_of(&body).await;
    let excluded = e["decision"]["candidates"].as_array().unwrap().iter().find(|c| c["route"] == primary.as_str()).unwrap();
    assert!(excluded["excluded"].as_str().unwrap().contains("circuit open"), "{e}");
    // The primary recovers; after the open period one probe goes through and closes it.
    app.flappy_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/flappy", false))).await;
    assert_eq!(app.calls("flappy"), 3, "the probe");
    assert_eq!(app.execution_of(&body).await["route"], primary.as_str());
    let (_, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/flappy", false))).await;
    assert_eq!(app.calls("flappy"), 4, "closed again: the primary serves");
    assert_eq!(app.execution_of(&body).await["route"], primary.as_str());
    let report = app.services.verify_ledger().await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
});

db_test!(async fn error_mapping_is_configuration(db) {
    // An operator rule says this provider's 503 means the request itself is
    // bad: no fallback, the status the rule names (422), and the route's
    // breaker is not charged.
    let app = spawn_with(db, |s| {
        s.routing.error_rules = vec![modelroute_routing::ErrorRule {
            provider: Some("upstream-a".into()),
            status: vec![503],
            code: None,
            message_contains: Some("overloaded".into()),
            canonical: modelroute_routing::CanonicalError::InvalidRequest,
            retryable: None,
            counts_against_breaker: None,
            client_status: Some(422),
        }];
    })
    .await;
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/chat", false))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "invalid_request");
    assert_eq!((app.calls("down"), app.calls("ok")), (1, 0), "no fallback for a non-retryable rule");
    // The context-length answer of the strict model maps to its own code.
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/strict", false))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "context_length_exceeded");
});

db_test!(async fn a_transient_failure_is_retried_with_backoff_and_retry_after_is_honoured(db) {
    let app = spawn_with(db, |s| {
        s.routing.retry.attempts_per_route = 3;
        s.routing.retry.base_backoff_ms = 50;
        // The shared set-up's breaker opens after two failures, which would
        // (rightly) refuse the third try; this test is about retries.
        s.routing.breaker.minimum_calls = 10;
    })
    .await;
    // 503 + Retry-After: 1 → wait a second, retry the same (only) route, succeed.
    let started = std::time::Instant::now();
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/busy-once", false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured: {:?}", started.elapsed());
    assert_eq!(app.calls("busy-once"), 2);
    // Two 503s without Retry-After: jittered backoff, third call succeeds.
    let (status, body) = app.send("POST", "/v1/chat/completions", Some(ask("acme/busy-twice", false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.calls("busy-twice"), 3);
    let attempts = app.execution_of(&body).await["decision"]["attempts"].as_array().unwrap().len();
    assert_eq!(attempts, 3, "every try is recorded");
    // Still one hold and one settlement per execution.
    let report = app.services.verify_ledger().await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.entries, 1 + 2 * 2);
});
