//! The adapter conformance suite: every HTTP adapter runs the same checks
//! against a local stand-in that speaks its provider's real wire format
//! (`modelroute-testkit`). The stand-in answers deterministically from what
//! it received, so each check proves a piece of the request crossed the
//! translation intact and the answer came back whole.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use modelroute_providers::{
    ChatRequest, ChatResponse, FinishReason, HttpConfig, Message, Part, Provider as _, ProviderClient, ProviderConfig,
    ProviderError, ProviderErrorKind, ProviderRegistry, ResponseFormat, Role, StreamEvent, Tool, ToolCall, ToolChoice,
    Usage,
};
use modelroute_routing::{CanonicalError, ErrorRules, UpstreamFailure};
use modelroute_testkit::{StandIn, TEST_KEY, Wire};
use modelroute_types::Secret;
use serde_json::{Value, json};

struct Setup {
    client: ProviderClient,
    _standin: StandIn,
}

fn config(wire: Wire, base_url: String, key: &str, timeout_ms: u64) -> ProviderConfig {
    let http = HttpConfig {
        timeout_ms,
        stream_idle_timeout_ms: 500,
        max_concurrency: 0,
        ..HttpConfig::new(base_url, Secret::new(key))
    };
    match wire {
        Wire::OpenAi => ProviderConfig::OpenaiCompatible(http),
        Wire::Anthropic => ProviderConfig::Anthropic(http),
        Wire::Gemini => ProviderConfig::Gemini(http),
    }
}

async fn setup_with(wire: Wire, key: &str, timeout_ms: u64) -> Setup {
    let standin = StandIn::start(wire).await;
    let providers = BTreeMap::from([("p".to_owned(), config(wire, standin.base_url(), key, timeout_ms))]);
    let registry = ProviderRegistry::from_config(&providers).unwrap();
    let client = (*registry.get("p").unwrap()).clone();
    Setup { client, _standin: standin }
}

async fn setup(wire: Wire) -> Setup {
    setup_with(wire, TEST_KEY, 3_000).await
}

fn req(model: &str, user: &str) -> ChatRequest {
    let mut r =
        ChatRequest::new(model.into(), vec![Message::text(Role::System, "be brief"), Message::text(Role::User, user)]);
    r.max_tokens = Some(100);
    r
}

/// A streamed answer gathered: text, tool calls, and the end (if any).
#[derive(Debug, Default)]
struct Gathered {
    text: String,
    calls: Vec<ToolCall>,
    done: Option<(FinishReason, Usage)>,
    /// The provider reported no usage.
    estimated: bool,
    thinking: String,
    malformed: usize,
    error: Option<ProviderError>,
}

async fn gather(client: &ProviderClient, r: &ChatRequest) -> Gathered {
    let mut g = Gathered::default();
    let mut stream = client.chat_stream(r).await.unwrap();
    while let Some(event) = stream.next().await {
        match event {
            Ok(StreamEvent::Delta(d)) => g.text.push_str(&d),
            Ok(StreamEvent::ToolCallDelta { index, id, name, arguments }) => {
                let i = usize::try_from(index).unwrap();
                if g.calls.len() <= i {
                    g.calls
                        .resize(i + 1, ToolCall { id: String::new(), name: String::new(), arguments: String::new() });
                }
                let call = &mut g.calls[i];
                if let Some(id) = id {
                    call.id = id;
                }
                if let Some(name) = name {
                    call.name = name;
                }
                call.arguments.push_str(&arguments);
            }
            Ok(StreamEvent::Done { finish_reason, usage, estimated }) => {
                assert!(g.done.is_none(), "one Done only");
                g.done = Some((finish_reason, usage));
                g.estimated = estimated;
            }
            Ok(StreamEvent::Thinking(t)) => g.thinking.push_str(&t),
            Ok(StreamEvent::Malformed) => g.malformed += 1,
            Err(e) => {
                g.error = Some(e);
                break;
            }
        }
    }
    g
}

/// How the executor classifies an adapter's error (the same inputs).
fn classify(e: &ProviderError) -> (CanonicalError, bool) {
    let fallback = match e.kind {
        ProviderErrorKind::Timeout | ProviderErrorKind::FirstTokenTimeout => CanonicalError::Timeout,
        ProviderErrorKind::RateLimited => CanonicalError::RateLimited,
        ProviderErrorKind::InvalidRequest => CanonicalError::InvalidRequest,
        ProviderErrorKind::Unavailable | ProviderErrorKind::StreamCut | ProviderErrorKind::Malformed => {
            CanonicalError::UpstreamError
        }
    };
    let c = ErrorRules::default().classify(&UpstreamFailure {
        provider: "p",
        status: e.status,
        code: e.upstream_code.as_deref(),
        message: e.upstream_message.as_deref().unwrap_or(&e.message),
        fallback,
    });
    (c.canonical, c.retryable)
}

fn args(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments).unwrap_or_else(|e| panic!("arguments are not JSON: {e}: {}", call.arguments))
}

async fn text_round_trip(wire: Wire) {
    let s = setup(wire).await;
    let r = req("m", "hello world");
    let a: ChatResponse = s.client.chat(&r).await.unwrap();
    assert_eq!(a.content, "echo: hello world [system: be brief]");
    assert_eq!(a.finish_reason, FinishReason::Stop);
    assert_eq!(a.usage, Usage { input_tokens: 4, output_tokens: 6 }, "the provider's own counts");
    let g = gather(&s.client, &r).await;
    assert!(g.error.is_none(), "{:?}", g.error);
    assert_eq!(g.text, a.content, "the stream carries the same answer");
    assert_eq!(g.done, Some((FinishReason::Stop, a.usage)));
}

async fn max_tokens_and_stop(wire: Wire) {
    let s = setup(wire).await;
    let mut r = req("m", "one two three four");
    r.max_tokens = Some(2);
    let a = s.client.chat(&r).await.unwrap();
    assert_eq!((a.content.as_str(), a.finish_reason), ("echo: one ", FinishReason::Length));
    let g = gather(&s.client, &r).await;
    assert_eq!((g.text.as_str(), g.done.map(|d| d.0)), ("echo: one ", Some(FinishReason::Length)));
    let mut r = req("m", "one two three four");
    r.stop = vec!["three".into()];
    let a = s.client.chat(&r).await.unwrap();
    assert_eq!((a.content.as_str(), a.finish_reason), ("echo: one two ", FinishReason::Stop));
}

fn with_tool(mut r: ChatRequest, choice: ToolChoice) -> ChatRequest {
    r.tools = vec![Tool {
        name: "lookup".into(),
        description: Some("Looks a thing up".into()),
        parameters: json!({ "type": "object", "properties": { "input": { "type": "string" } }, "required": ["input"] }),
    }];
    r.tool_choice = Some(choice);
    r
}

async fn tool_calls(wire: Wire) {
    let s = setup(wire).await;
    let r = with_tool(req("m", "hello world"), ToolChoice::Tool("lookup".into()));
    let a = s.client.chat(&r).await.unwrap();
    assert_eq!(a.finish_reason, FinishReason::ToolCalls);
    assert_eq!(a.tool_calls.len(), 1);
    assert_eq!(a.tool_calls[0].name, "lookup");
    assert!(!a.tool_calls[0].id.is_empty(), "a call has an id to answer");
    assert_eq!(args(&a.tool_calls[0]), json!({ "input": "hello world" }));
    let g = gather(&s.client, &r).await;
    assert_eq!(g.done.map(|d| d.0), Some(FinishReason::ToolCalls));
    assert_eq!(g.calls.len(), 1);
    assert_eq!(g.calls[0].name, "lookup");
    assert_eq!(args(&g.calls[0]), json!({ "input": "hello world" }), "streamed arguments reassemble");
    // `required` calls some tool; `none` calls none.
    let any = s.client.chat(&with_tool(req("m", "x"), ToolChoice::Required)).await.unwrap();
    assert_eq!(any.tool_calls[0].name, "lookup");
    let none = s.client.chat(&with_tool(req("m", "lookup x"), ToolChoice::None)).await.unwrap();
    assert!(none.tool_calls.is_empty() && none.content.starts_with("echo: lookup x"));
}

async fn tool_results(wire: Wire) {
    let s = setup(wire).await;
    let mut r = with_tool(req("m", "weather in Paris?"), ToolChoice::Auto);
    r.messages.push(Message {
        role: Role::Assistant,
        content: vec![],
        tool_calls: vec![ToolCall {
            id: "call_1".into(),
            name: "lookup".into(),
            arguments: r#"{"input":"Paris"}"#.into(),
        }],
        tool_call_id: None,
    });
    r.messages.push(Message { tool_call_id: Some("call_1".into()), ..Message::text(Role::Tool, "18C") });
    let a = s.client.chat(&r).await.unwrap();
    assert_eq!(a.content, "tool lookup said: 18C");
    assert_eq!(a.finish_reason, FinishReason::Stop);
}

async fn images(wire: Wire) {
    let s = setup(wire).await;
    let mut r = req("m", "");
    r.messages[1].content = vec![
        Part::Text { text: "look".into() },
        Part::Image { url: "https://example.com/cat.png".into() },
        Part::Image { url: "data:image/png;base64,iVBORw0KGgo=".into() },
    ];
    let a = s.client.chat(&r).await.unwrap();
    assert_eq!(a.content, "echo: look [system: be brief] [images: https://example.com/cat.png, image/png]");
}

async fn json_schema(wire: Wire) {
    let s = setup(wire).await;
    let mut r = req("m", "hello world");
    r.response_format = Some(ResponseFormat::JsonSchema {
        name: "answer".into(),
        schema: json!({ "type": "object", "properties": { "echo": { "type": "string" } } }),
        strict: true,
    });
    let a = s.client.chat(&r).await.unwrap();
    let v: Value = serde_json::from_str(&a.content).unwrap_or_else(|e| panic!("not JSON: {e}: {}", a.content));
    assert!(v.is_object() && a.content.contains("hello world"), "{}", a.content);
    assert!(a.tool_calls.is_empty() && a.finish_reason == FinishReason::Stop);
    let g = gather(&s.client, &r).await;
    assert_eq!(serde_json::from_str::<Value>(&g.text).unwrap(), v, "streamed JSON is the same");
}

async fn errors_keep_what_the_rules_need(wire: Wire) {
    let s = setup(wire).await;
    let e = s.client.chat(&req("fault-ratelimit", "x")).await.unwrap_err();
    assert_eq!(classify(&e), (CanonicalError::RateLimited, true));
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)), "Retry-After is kept");
    assert_eq!(
        classify(&s.client.chat(&req("fault-overloaded", "x")).await.unwrap_err()),
        (CanonicalError::Overloaded, true)
    );
    assert_eq!(
        classify(&s.client.chat(&req("fault-servererror", "x")).await.unwrap_err()),
        (CanonicalError::UpstreamError, true)
    );
    assert_eq!(
        classify(&s.client.chat(&req("fault-context", "x")).await.unwrap_err()),
        (CanonicalError::ContextLengthExceeded, false)
    );
    match s.client.chat(&req("fault-filter", "x")).await {
        Ok(a) => assert_eq!(a.finish_reason, FinishReason::ContentFilter),
        Err(e) => assert_eq!(classify(&e), (CanonicalError::ContentFiltered, false)),
    }
    let reset = s.client.chat(&req("fault-reset", "x")).await.unwrap_err();
    assert_eq!(reset.kind, ProviderErrorKind::Unavailable);
    let bad_key = setup_with(wire, "wrong-key", 3_000).await;
    assert_eq!(classify(&bad_key.client.chat(&req("m", "x")).await.unwrap_err()), (CanonicalError::AuthFailed, true));
    let impatient = setup_with(wire, TEST_KEY, 300).await;
    assert_eq!(impatient.client.chat(&req("fault-hang", "x")).await.unwrap_err().kind, ProviderErrorKind::Timeout);
}

async fn broken_streams_never_look_complete(wire: Wire) {
    let s = setup(wire).await;
    let whole = gather(&s.client, &req("m", "one two three")).await;
    let cut = gather(&s.client, &req("fault-cut", "one two three")).await;
    assert!(cut.done.is_none(), "a cut stream has no Done");
    assert_eq!(cut.error.map(|e| e.kind), Some(ProviderErrorKind::StreamCut));
    let midway = gather(&s.client, &req("fault-cut-midway", "one two three")).await;
    assert!(midway.done.is_none() && !midway.text.is_empty() && midway.text.len() < whole.text.len(), "{midway:?}");
    // Ended cleanly before the finish reason: no Done, no error — the caller sees a cut.
    let truncated = gather(&s.client, &req("fault-truncated", "one two three")).await;
    assert!(truncated.done.is_none() && truncated.error.is_none(), "{truncated:?}");
    assert_eq!(truncated.text, whole.text, "the deltas before the end still arrive");
    let stall = gather(&s.client, &req("fault-stall", "one two three")).await;
    assert!(stall.done.is_none());
    assert_eq!(stall.error.map(|e| e.kind), Some(ProviderErrorKind::Timeout));
    // Past the allowance of malformed chunks (3 by default): failed.
    let garbled = gather(&s.client, &req("fault-malformed-4", "one two three")).await;
    assert!(garbled.done.is_none());
    assert_eq!((garbled.malformed, garbled.error.map(|e| e.kind)), (3, Some(ProviderErrorKind::Malformed)));
}

async fn complete_streams_are_complete_without_their_end_marker(wire: Wire) {
    let s = setup(wire).await;
    let whole = gather(&s.client, &req("m", "one two three")).await;
    assert!(whole.done.is_some() && !whole.estimated && whole.malformed == 0, "{whole:?}");
    // A finish reason and usage, then the connection closes cleanly: complete, the provider's counts.
    let no_end = gather(&s.client, &req("fault-noend", "one two three")).await;
    assert_eq!((no_end.text.as_str(), no_end.done, no_end.estimated), (whole.text.as_str(), whole.done, false));
    // A finish reason without usage (OpenAI-compatible hosts that ignore stream_options): complete, estimated.
    let bare = gather(&s.client, &req("fault-bare", "one two three")).await;
    assert_eq!(bare.text, whole.text);
    let (finish, usage) = bare.done.unwrap();
    assert_eq!(finish, FinishReason::Stop);
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    assert_eq!(bare.estimated, wire == Wire::OpenAi, "only OpenAI's usage is optional");
    // One malformed chunk among good ones: skipped, said, and the answer goes on.
    let malformed = gather(&s.client, &req("fault-malformed", "one two three")).await;
    assert_eq!((malformed.text.as_str(), malformed.done, malformed.malformed), (whole.text.as_str(), whole.done, 1));
    // Reasoning before the answer is progress, not text.
    let thinks = gather(&s.client, &req("fault-thinks", "one two three")).await;
    assert_eq!((thinks.text.as_str(), thinks.done.is_some()), (whole.text.as_str(), true));
    assert!(thinks.thinking.starts_with("Considering the question."), "{thinks:?}");
}

macro_rules! conformance {
    ($($adapter:ident => $wire:expr),* $(,)?) => {$(
        mod $adapter {
            use super::*;
            #[tokio::test] async fn text_round_trip() { super::text_round_trip($wire).await }
            #[tokio::test] async fn max_tokens_and_stop() { super::max_tokens_and_stop($wire).await }
            #[tokio::test] async fn tool_calls() { super::tool_calls($wire).await }
            #[tokio::test] async fn tool_results() { super::tool_results($wire).await }
            #[tokio::test] async fn images() { super::images($wire).await }
            #[tokio::test] async fn json_schema() { super::json_schema($wire).await }
            #[tokio::test] async fn errors_keep_what_the_rules_need() { super::errors_keep_what_the_rules_need($wire).await }
            #[tokio::test] async fn broken_streams_never_look_complete() { super::broken_streams_never_look_complete($wire).await }
            #[tokio::test] async fn complete_streams_are_complete_without_their_end_marker() { super::complete_streams_are_complete_without_their_end_marker($wire).await }
        }
    )*};
}

conformance! {
    openai => Wire::OpenAi,
    anthropic => Wire::Anthropic,
    gemini => Wire::Gemini,
}
