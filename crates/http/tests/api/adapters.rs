//! The server against the provider stand-ins of `modelroute-testkit`: both
//! ingress formats reach every adapter (tools and streaming included), a
//! late first token fails over before any byte is sent, a context-length
//! refusal goes only to a larger window, and a content filter is final.

use hyper::StatusCode;
use modelroute_db::db_test;
use modelroute_db::testing::TestDb;
use modelroute_providers::{BuiltinConfig, ProviderConfig};
use modelroute_routing::{ModelConfig, RouteConfig};
use modelroute_testkit::{StandIn, Wire};
use modelroute_types::Money;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp};

/// The server with the three providers' stand-ins.
struct App {
    app: TestApp,
    openai: StandIn,
    anthropic: StandIn,
    gemini: StandIn,
}

impl std::ops::Deref for App {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

fn route(id: &str, provider: &str, upstream: &str, price: &str) -> RouteConfig {
    crate::helpers::route(id, provider, upstream, price, price)
}

fn model(slug: &str, routes: Vec<RouteConfig>) -> ModelConfig {
    ModelConfig { slug: slug.into(), description: String::new(), context_window: 8192, routes }
}

async fn spawn(db: TestDb) -> App {
    let (openai, anthropic, gemini) =
        (StandIn::start(Wire::OpenAi).await, StandIn::start(Wire::Anthropic).await, StandIn::start(Wire::Gemini).await);
    let mut settings = crate::helpers::test_settings(&db);
    let http = crate::helpers::standin_config;
    settings.providers.insert("oa".into(), ProviderConfig::OpenaiCompatible(http(&openai)));
    settings.providers.insert("an".into(), ProviderConfig::Anthropic(http(&anthropic)));
    settings.providers.insert("ge".into(), ProviderConfig::Gemini(http(&gemini)));
    let slow = BuiltinConfig { latency_ms: 150, ..BuiltinConfig::default() };
    settings.providers.insert("slow-builtin".into(), ProviderConfig::Builtin(slow));
    let slow = RouteConfig { first_token_timeout_ms: Some(300), ..route("slow-a", "an", "fault-slowfirst", "1") };
    let wide = RouteConfig { context_window: Some(1_000_000), ..route("ctx-c", "ge", "m", "3") };
    settings.catalogue.models = vec![
        model("via/openai", vec![route("via-oa", "oa", "m", "1")]),
        model("via/anthropic", vec![route("via-an", "an", "m", "1")]),
        model("via/gemini", vec![route("via-ge", "ge", "m", "1")]),
        model("slow/first", vec![slow, route("slow-b", "ge", "m", "2")]),
        model(
            "ctx/model",
            vec![route("ctx-a", "oa", "fault-context", "1"), route("ctx-b", "an", "fault-context", "2"), wide],
        ),
        model("ctx/none", vec![route("ctxn-a", "oa", "fault-context", "1")]),
        model("filter/gemini", vec![route("f-a", "ge", "fault-filter", "1"), route("f-b", "oa", "m", "2")]),
        model("policy/m", vec![route("p-cheap", "slow-builtin", "echo", "1"), route("p-fast", "oa", "m", "2")]),
        model("busy/m", vec![route("busy-a", "oa", "fault-ratelimit-bare", "1"), route("busy-b", "an", "m", "2")]),
    ];
    App { app: TestApp::start(db, settings).await, openai, anthropic, gemini }
}

impl TestApp {
    /// Attempts of an execution: (route, outcome, error code).
    async fn attempts(&self, id: &str) -> Vec<(String, String, Option<String>)> {
        let e = self.execution(id).await;
        e["decision"]["attempts"]
            .as_array()
            .unwrap_or_else(|| panic!("no attempts in {e}"))
            .iter()
            .map(|a| {
                (
                    a["route"].as_str().unwrap().to_owned(),
                    a["outcome"].as_str().unwrap().to_owned(),
                    a["error_code"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}

/// The JSON payloads of an SSE body.
fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn tools() -> Value {
    json!([{ "type": "function", "function": { "name": "lookup", "description": "Looks up",
             "parameters": { "type": "object", "properties": { "input": { "type": "string" } } } } }])
}

db_test!(async fn both_ingress_formats_reach_every_adapter_with_tools_and_streams(db) {
    let app = spawn(db).await;
    for slug in ["via/openai", "via/anthropic", "via/gemini"] {
        // OpenAI in, any provider out.
        let plain = json!({ "model": slug, "messages": [
            { "role": "system", "content": "be brief" }, { "role": "user", "content": "Hello there" }] });
        let Reply { status, body, .. } = app.post("/v1/chat/completions", &plain).await;
        assert_eq!(status, StatusCode::OK, "{slug}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "echo: Hello there [system: be brief]", "{slug}");
        assert_eq!(v["usage"], json!({ "prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10 }), "{slug}");

        let with_tools = json!({ "model": slug, "tools": tools(), "tool_choice": "required",
            "messages": [{ "role": "user", "content": "find cats" }] });
        let Reply { status, body, .. } = app.post("/v1/chat/completions", &with_tools).await;
        assert_eq!(status, StatusCode::OK, "{slug}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{slug}: {body}");
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "lookup");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({ "input": "find cats" }), "{slug}");

        // The tool's result goes back and is read.
        let id = call["id"].as_str().unwrap();
        let follow_up = json!({ "model": slug, "tools": tools(), "messages": [
            { "role": "user", "content": "find cats" },
            { "role": "assistant", "content": null, "tool_calls": [call] },
            { "role": "tool", "tool_call_id": id, "content": "three cats" }] });
        let Reply { status, body, .. } = app.post("/v1/chat/completions", &follow_up).await;
        assert_eq!(status, StatusCode::OK, "{slug}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "tool lookup said: three cats", "{slug}");

        // Streamed tool call, OpenAI's chunks.
        let mut streamed = with_tools.clone();
        streamed["stream"] = json!(true);
        let Reply { status, body, .. } = app.post("/v1/chat/completions", &streamed).await;
        assert_eq!(status, StatusCode::OK, "{slug}: {body}");
        let chunks = sse_data(&body);
        let arguments: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({ "input": "find cats" }), "{slug}");
        assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{slug}: {body}");
        assert!(body.ends_with("data: [DONE]\n\n"));

        // Anthropic in, any provider out, streamed with a tool.
        let anthropic = json!({ "model": slug, "max_tokens": 100, "stream": true, "system": "be brief",
            "tools": [{ "name": "lookup", "input_schema": { "type": "object" } }], "tool_choice": { "type": "any" },
            "messages": [{ "role": "user", "content": "find dogs" }] });
        let Reply { status, body, .. } = app.post("/v1/messages", &anthropic).await;
        assert_eq!(status, StatusCode::OK, "{slug}: {body}");
        let events = sse_data(&body);
        let start = events.iter().find(|e| e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use");
        assert_eq!(start.unwrap()["content_block"]["name"], "lookup", "{slug}: {body}");
        let partial: String = events.iter().filter_map(|e| e["delta"]["partial_json"].as_str()).collect();
        assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), json!({ "input": "find dogs" }), "{slug}");
        let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(events.last().unwrap()["type"], "message_stop");
    }
    let _no_hold_left = app.available().await;
});

db_test!(async fn a_late_first_token_fails_over_before_any_byte(db) {
    let app = spawn(db).await;
    let before = app.available().await;
    let ask = json!({ "model": "slow/first", "stream": true, "messages": [{ "role": "user", "content": "Hello" }] });
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let chunks = sse_data(&body);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "echo: Hello");
    assert_eq!((app.anthropic.calls("fault-slowfirst"), app.gemini.calls("m")), (1, 1));
    let id = chunks[0]["id"].as_str().unwrap();
    let attempts = app.attempts(id).await;
    assert_eq!(
        attempts,
        vec![
            (app.public_route("slow/first", 0), "failed".into(), Some("timeout".into())),
            (app.public_route("slow/first", 1), "succeeded".into(), None),
        ]
    );
    // One settlement, at the serving route's price: 1 + 2 tokens at $2/M each.
    let e = app.execution(id).await;
    assert_eq!(e["cost"]["nano_usd"], 6_000);
    assert_eq!(before.checked_sub(app.available().await).unwrap(), Money::from_units(6_000));
});

db_test!(async fn a_context_length_refusal_goes_only_to_a_larger_window(db) {
    let app = spawn(db).await;
    let ask = |model: &str| json!({ "model": model, "messages": [{ "role": "user", "content": "Hello" }] });
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask("ctx/model")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: Hello");
    assert_eq!(
        (app.openai.calls("fault-context"), app.anthropic.calls("fault-context"), app.gemini.calls("m")),
        (1, 0, 1),
        "no retry of the refusing route, the same-size window skipped"
    );
    let attempts = app.attempts(v["id"].as_str().unwrap()).await;
    let outcomes: Vec<(&str, Option<&str>)> = attempts.iter().map(|a| (a.1.as_str(), a.2.as_deref())).collect();
    assert_eq!(
        outcomes,
        [("failed", Some("context_length_exceeded")), ("skipped", Some("context_too_small")), ("succeeded", None)]
    );

    // No larger window: the client learns why, once, and pays nothing.
    let before = app.available().await;
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask("ctx/none")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("maximum context length"), "{body}");
    assert_eq!(app.openai.calls("fault-context"), 2, "one call for this request");
    assert_eq!(app.available().await, before);
});

db_test!(async fn a_content_filter_is_final_and_says_so(db) {
    let app = spawn(db).await;
    let before = app.available().await;
    let ask = json!({ "model": "filter/gemini", "messages": [{ "role": "user", "content": "Hello" }] });
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "content_filtered");
    assert!(v["error"]["message"].as_str().unwrap().contains("SAFETY"), "the reason is passed on: {body}");
    assert_eq!((app.gemini.calls("fault-filter"), app.openai.calls("m")), (1, 0), "never retried elsewhere");
    assert_eq!(app.available().await, before);
});

db_test!(async fn org_policy_and_request_preferences_order_and_exclude_routes(db) {
    let app = spawn(db).await;
    let defaults = app.get("/v1/routing/preferences").await.json;
    assert_eq!(defaults["policy"], "cheapest");
    assert_eq!(defaults["max_output_price"], Value::Null);
    let ask = |routing: Value| {
        let mut a = json!({ "model": "policy/m", "messages": [{ "role": "user", "content": "Hello" }] });
        if !routing.is_null() {
            a["routing"] = routing;
        }
        a
    };
    let served_by = |body: &str| -> String {
        let v: Value = serde_json::from_str(body).unwrap();
        v["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
    };
    // Cheapest (the default): the slow built-in route.
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask(Value::Null)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served_by(&body), "Echo: Hello");
    // One request asks for the fastest: the unobserved route is tried.
    let Reply { body, .. } = app.post("/v1/chat/completions", &ask(json!({ "policy": "fastest" }))).await;
    assert_eq!(served_by(&body), "echo: Hello");
    // The org makes `fastest` its policy: observed latencies now decide.
    let Reply { status, body, .. } = app.put("/v1/routing/preferences", &json!({ "policy": "fastest" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let Reply { body, .. } = app.post("/v1/chat/completions", &ask(Value::Null)).await;
    assert_eq!(served_by(&body), "echo: Hello");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    let decision = &app.execution(&id).await["decision"];
    assert_eq!(decision["policy"], "fastest");
    let cheap = decision["candidates"].as_array().unwrap().iter().find(|c| c["rank"] == 2).unwrap().clone();
    assert!(cheap["latency_ms"].as_u64().unwrap() >= 150, "the evidence shows the slow route's latency: {decision}");
    // A ceiling excludes the dearer route; a request cannot raise it.
    let capped = json!({ "policy": "fastest", "max_output_price": "1.50" });
    let Reply { status, body, .. } = app.put("/v1/routing/preferences", &capped).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.get("/v1/routing/preferences").await.json["max_output_price"], "1.500000000");
    let Reply { body, .. } = app.post("/v1/chat/completions", &ask(json!({ "max_output_price": "5" }))).await;
    assert_eq!(served_by(&body), "Echo: Hello");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    let decision = &app.execution(&id).await["decision"];
    assert!(decision["candidates"].as_array().unwrap().iter().any(|c| c["excluded"] == "output price above the ceiling"));
    // Bad preferences are a 400 that names the field, and change nothing.
    let Reply { status, body, .. } = app.put("/v1/routing/preferences", &json!({ "policy": "random" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("policy"), "{body}");
    let Reply { status, body, .. } = app.put("/v1/routing/preferences", &json!({ "max_input_price": 0.5 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a float price is refused: {body}");
    assert_eq!(app.get("/v1/routing/preferences").await.json["policy"], "fastest");
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask(json!({ "policy": "slowest" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
});

db_test!(async fn the_catalogue_reloads_while_serving_and_a_bad_one_is_refused(db) {
    let app = spawn(db).await;
    let ask = |model: &str| json!({ "model": model, "messages": [{ "role": "user", "content": "Hello" }] });
    let Reply { status, .. } = app.post("/v1/chat/completions", &ask("via/openai")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((app.openai.calls("m"), app.gemini.calls("m")), (1, 0));

    // A new catalogue: via/openai now served by Gemini, and a new model.
    let mut next = app.settings.clone();
    next.catalogue.models[0].routes = vec![route("via-oa-moved", "ge", "m", "1")];
    next.catalogue.models.push(model("new/model", vec![route("new-r", "an", "m", "1")]));
    let models = app.reloader.reload(&next).unwrap();
    assert_eq!(models, app.settings.catalogue.models.len() + 1);
    let listed = app.get("/v1/models").await.json;
    assert!(listed["data"].as_array().unwrap().iter().any(|m| m["id"] == "new/model"), "{listed}");
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask("via/openai")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((app.openai.calls("m"), app.gemini.calls("m")), (1, 1), "the moved route serves");
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask("new/model")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A catalogue naming an unknown provider is refused, by name; the running one stays.
    let mut bad = next.clone();
    bad.catalogue.models[0].routes[0].provider = "nope".into();
    let e = app.reloader.reload(&bad).unwrap_err().to_string();
    assert!(e.contains("models[0].routes[0].provider `nope`"), "{e}");
    let Reply { status, .. } = app.post("/v1/chat/completions", &ask("new/model")).await;
    assert_eq!(status, StatusCode::OK);
    let _no_hold_left = app.available().await;
});

db_test!(async fn a_persistent_429_without_retry_after_is_backed_off_then_failed_over(db) {
    let app = spawn(db).await;
    let before = app.available().await;
    let ask = json!({ "model": "busy/m", "messages": [{ "role": "user", "content": "Hello" }] });
    let Reply { status, body, .. } = app.post("/v1/chat/completions", &ask).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: Hello");
    // Tried twice (the default attempts per route, with backoff), then the next route.
    assert_eq!((app.openai.calls("fault-ratelimit-bare"), app.anthropic.calls("m")), (2, 1));
    let attempts = app.attempts(v["id"].as_str().unwrap()).await;
    let outcomes: Vec<(&str, Option<&str>)> = attempts.iter().map(|a| (a.1.as_str(), a.2.as_deref())).collect();
    assert_eq!(outcomes, [("failed", Some("rate_limited")), ("failed", Some("rate_limited")), ("succeeded", None)]);
    // One settlement, at the serving route's price: 1 + 2 tokens at $2/M each.
    assert_eq!(before.checked_sub(app.available().await).unwrap(), Money::from_units(6_000));
});
