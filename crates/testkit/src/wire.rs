//! The three wire formats, read and written from the providers' documented
//! shapes: requests into an [`Ask`], an [`Answer`] into a body or stream
//! frames, and each provider's error bodies.

use serde_json::{Value, json};

use crate::brain::{Answer, Ask, words};
use crate::server::Wire;

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

fn strs(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn arr(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok())
}

/// Reads a request body; `Err` is a 400 message.
pub(crate) fn ask(wire: Wire, body: &Value) -> Result<Ask, String> {
    match wire {
        Wire::OpenAi => openai_ask(body),
        Wire::Anthropic => anthropic_ask(body),
        Wire::Gemini => gemini_ask(body),
    }
}

fn openai_ask(body: &Value) -> Result<Ask, String> {
    let mut ask = Ask::default();
    let messages = arr(body.get("messages"));
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut calls: Vec<(String, String)> = Vec::new(); // (id, name)
    for (i, m) in messages.iter().enumerate() {
        let content = m.get("content").unwrap_or(&Value::Null);
        let text = text_of(content);
        ask.prompt_words += words(&text);
        let last = i + 1 == messages.len();
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => ask.system = [ask.system.as_str(), &text].join(" ").trim().to_owned(),
            Some("user") => {
                ask.last_user = text;
                ask.tool_result = None;
                ask.images = arr(content.as_array().map(|_| content))
                    .iter()
                    .filter_map(|p| p.pointer("/image_url/url").and_then(Value::as_str))
                    .map(image_ref)
                    .collect();
            }
            Some("assistant") => {
                if last && !text.is_empty() {
                    ask.prefix = Some(text);
                }
                for c in arr(m.get("tool_calls")) {
                    let id = c.get("id").and_then(Value::as_str).ok_or("tool_calls[].id is required")?;
                    let name =
                        c.pointer("/function/name").and_then(Value::as_str).ok_or("function.name is required")?;
                    calls.push((id.to_owned(), name.to_owned()));
                }
            }
            Some("tool") => {
                let id = m.get("tool_call_id").and_then(Value::as_str).ok_or("tool_call_id is required")?;
                let name = calls.iter().find(|(i, _)| i == id).ok_or("tool_call_id answers no tool call")?.1.clone();
                ask.tool_result = Some((name, text));
            }
            other => return Err(format!("invalid role {other:?}")),
        }
    }
    ask.tools = arr(body.get("tools"))
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    match body.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => ask.forced_tool = Some(String::new()),
        Some(Value::String(s)) if s == "none" => ask.tools.clear(),
        Some(v @ Value::Object(_)) => {
            ask.forced_tool = v.pointer("/function/name").and_then(Value::as_str).map(str::to_owned);
        }
        _ => {}
    }
    ask.json =
        matches!(body.pointer("/response_format/type").and_then(Value::as_str), Some("json_object" | "json_schema"));
    ask.max_tokens = usize_of(body.get("max_completion_tokens")).or_else(|| usize_of(body.get("max_tokens")));
    ask.stop = strs(body.get("stop"));
    Ok(ask)
}

fn image_ref(url: &str) -> String {
    url.strip_prefix("data:").and_then(|r| r.split(';').next()).map_or_else(|| url.to_owned(), str::to_owned)
}

fn anthropic_ask(body: &Value) -> Result<Ask, String> {
    let mut ask = Ask::default();
    ask.max_tokens = Some(usize_of(body.get("max_tokens")).ok_or("max_tokens: Field required")?);
    ask.system = text_of(body.get("system").unwrap_or(&Value::Null));
    ask.prompt_words = words(&ask.system);
    let messages = arr(body.get("messages"));
    if messages.first().and_then(|m| m.get("role")).and_then(Value::as_str) != Some("user") {
        return Err("messages: first message must use the \"user\" role".into());
    }
    let mut calls: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let last = i + 1 == messages.len();
        let content = m.get("content").unwrap_or(&Value::Null);
        let blocks: Vec<Value> = match content {
            Value::String(s) => vec![json!({ "type": "text", "text": s })],
            Value::Array(a) => a.clone(),
            _ => return Err("content must be a string or an array of blocks".into()),
        };
        let role = m.get("role").and_then(Value::as_str);
        if role == Some("user") {
            ask.images.clear();
            ask.tool_result = None;
            let mut text = Vec::new();
            for b in &blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push(b.get("text").and_then(Value::as_str).unwrap_or_default().to_owned()),
                    Some("image") => ask.images.push(match b.pointer("/source/type").and_then(Value::as_str) {
                        Some("url") => b.pointer("/source/url").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        Some("base64") => {
                            b.pointer("/source/media_type").and_then(Value::as_str).unwrap_or_default().to_owned()
                        }
                        _ => return Err("image.source.type must be base64 or url".into()),
                    }),
                    Some("tool_result") => {
                        let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
                        let Some((_, name)) = calls.iter().find(|(i, _)| i == id) else {
                            return Err("unexpected `tool_use_id` found in `tool_result` blocks".into());
                        };
                        let result = text_of(b.get("content").unwrap_or(&Value::Null));
                        ask.prompt_words += words(&result);
                        ask.tool_result = Some((name.clone(), result));
                    }
                    other => return Err(format!("unsupported block type {other:?} in a user turn")),
                }
            }
            let text = text.join(" ");
            ask.prompt_words += words(&text);
            if !text.is_empty() || ask.tool_result.is_none() {
                ask.last_user = text;
            }
        } else if role == Some("assistant") {
            let text = text_of(&Value::Array(blocks.clone()));
            ask.prompt_words += words(&text);
            if last && !text.is_empty() {
                // Anthropic's own rule for a prefilled answer.
                if text.ends_with(char::is_whitespace) {
                    return Err("messages: final assistant content cannot end with trailing whitespace".into());
                }
                ask.prefix = Some(text);
            }
            for b in &blocks {
                if b.get("type").and_then(Value::as_str) == Some("tool_use") {
                    if !b.get("input").is_some_and(Value::is_object) {
                        return Err("tool_use.input must be an object".into());
                    }
                    let id = b.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
                    calls.push((id.to_owned(), name.to_owned()));
                }
            }
        } else {
            return Err(format!("invalid role {role:?}"));
        }
    }
    for t in arr(body.get("tools")) {
        if t.get("input_schema").is_none() {
            return Err("tools[].input_schema: Field required".into());
        }
        ask.tools.push(t.get("name").and_then(Value::as_str).unwrap_or_default().to_owned());
    }
    match body.pointer("/tool_choice/type").and_then(Value::as_str) {
        Some("any") => ask.forced_tool = Some(String::new()),
        Some("tool") => {
            ask.forced_tool = body.pointer("/tool_choice/name").and_then(Value::as_str).map(str::to_owned);
        }
        Some("none") => ask.tools.clear(),
        _ => {}
    }
    ask.stop = strs(body.get("stop_sequences"));
    Ok(ask)
}

fn gemini_ask(body: &Value) -> Result<Ask, String> {
    let mut ask = Ask::default();
    ask.system = arr(body.pointer("/systemInstruction/parts"))
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    ask.prompt_words = words(&ask.system);
    let mut called: Vec<String> = Vec::new();
    let contents = arr(body.get("contents"));
    for (i, c) in contents.iter().enumerate() {
        let parts = arr(c.get("parts"));
        match c.get("role").and_then(Value::as_str) {
            Some("user") | None => {
                ask.images.clear();
                ask.tool_result = None;
                let mut text = Vec::new();
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        text.push(t.to_owned());
                    } else if let Some(m) = p.pointer("/inlineData/mimeType").and_then(Value::as_str) {
                        ask.images.push(m.to_owned());
                    } else if let Some(u) = p.pointer("/fileData/fileUri").and_then(Value::as_str) {
                        ask.images.push(u.to_owned());
                    } else if let Some(r) = p.get("functionResponse") {
                        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                        if !called.iter().any(|c| c == name) {
                            return Err(format!("functionResponse.name `{name}` answers no functionCall"));
                        }
                        let response = r.get("response").cloned().unwrap_or(Value::Null);
                        let result = response
                            .get("result")
                            .and_then(Value::as_str)
                            .map_or_else(|| response.to_string(), str::to_owned);
                        ask.prompt_words += words(&result);
                        ask.tool_result = Some((name.to_owned(), result));
                    } else {
                        return Err("unsupported part in a user turn".into());
                    }
                }
                let text = text.join(" ");
                ask.prompt_words += words(&text);
                if !text.is_empty() || ask.tool_result.is_none() {
                    ask.last_user = text;
                }
            }
            Some("model") => {
                for p in parts {
                    if let Some(name) = p.pointer("/functionCall/name").and_then(Value::as_str) {
                        called.push(name.to_owned());
                    }
                }
                let text = text_of(&Value::Array(parts.to_vec()));
                ask.prompt_words += words(&text);
                if i + 1 == contents.len() && !text.is_empty() {
                    ask.prefix = Some(text);
                }
            }
            Some(other) => return Err(format!("Please use a valid role: user, model. (got {other})")),
        }
    }
    ask.tools = arr(body.get("tools"))
        .iter()
        .flat_map(|t| arr(t.get("functionDeclarations")))
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    match body.pointer("/toolConfig/functionCallingConfig/mode").and_then(Value::as_str) {
        Some("ANY") => {
            let allowed = body.pointer("/toolConfig/functionCallingConfig/allowedFunctionNames/0");
            ask.forced_tool = Some(allowed.and_then(Value::as_str).unwrap_or_default().to_owned());
        }
        Some("NONE") => ask.tools.clear(),
        _ => {}
    }
    let generation = body.get("generationConfig");
    ask.json = generation.and_then(|g| g.get("responseMimeType")).and_then(Value::as_str) == Some("application/json");
    ask.max_tokens = usize_of(generation.and_then(|g| g.get("maxOutputTokens")));
    ask.stop = strs(generation.and_then(|g| g.get("stopSequences")));
    Ok(ask)
}

/// The non-streamed answer body.
pub(crate) fn body(wire: Wire, model: &str, a: &Answer) -> Value {
    let text = a.text();
    match wire {
        Wire::OpenAi => {
            let mut message = json!({ "role": "assistant", "content": if a.tool_call.is_some() { Value::Null } else { json!(text) }, "refusal": null });
            if let (Some((name, args)), Some(m)) = (&a.tool_call, message.as_object_mut()) {
                m.insert(
                    "tool_calls".into(),
                    json!([{ "id": "call_standin", "type": "function", "function": { "name": name, "arguments": args.to_string() } }]),
                );
            }
            json!({
                "id": "chatcmpl-standin", "object": "chat.completion", "created": 1_731_000_000, "model": model,
                "choices": [{ "index": 0, "message": message, "logprobs": null, "finish_reason": a.finish }],
                "usage": { "prompt_tokens": a.input_tokens, "completion_tokens": a.output_tokens,
                           "total_tokens": a.input_tokens + a.output_tokens },
                "system_fingerprint": "fp_standin",
            })
        }
        Wire::Anthropic => {
            let mut content = Vec::new();
            if !text.is_empty() {
                content.push(json!({ "type": "text", "text": text }));
            }
            if let Some((name, args)) = &a.tool_call {
                content.push(json!({ "type": "tool_use", "id": "toolu_standin", "name": name, "input": args }));
            }
            json!({
                "id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": anthropic_stop(a.finish), "stop_sequence": null,
                "usage": { "input_tokens": a.input_tokens, "cache_creation_input_tokens": 0,
                           "cache_read_input_tokens": 0, "output_tokens": a.output_tokens },
            })
        }
        Wire::Gemini => {
            let mut parts = Vec::new();
            if !text.is_empty() {
                parts.push(json!({ "text": text }));
            }
            if let Some((name, args)) = &a.tool_call {
                parts.push(json!({ "functionCall": { "name": name, "args": args } }));
            }
            json!({
                "candidates": [{ "content": { "parts": parts, "role": "model" }, "finishReason": gemini_finish(a.finish), "index": 0 }],
                "usageMetadata": gemini_usage(a),
                "modelVersion": model, "responseId": "standin",
            })
        }
    }
}

fn anthropic_stop(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        _ => "end_turn",
    }
}

fn gemini_finish(finish: &str) -> &'static str {
    if finish == "length" { "MAX_TOKENS" } else { "STOP" }
}

fn gemini_usage(a: &Answer) -> Value {
    json!({ "promptTokenCount": a.input_tokens, "candidatesTokenCount": a.output_tokens,
            "totalTokenCount": a.input_tokens + a.output_tokens })
}

fn sse(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// A streamed answer, in the order it is sent: `head` (the start and the
/// output), `tail` (the finish reason and the usage), `end` (the end
/// marker). Faults drop or break parts of it.
pub(crate) struct Frames {
    pub(crate) head: Vec<String>,
    pub(crate) tail: Vec<String>,
    pub(crate) end: Option<String>,
}

/// A frame of reasoning before the answer, as each provider streams it
/// (`None`: the format has none of its own).
pub(crate) fn thinking(wire: Wire, model: &str, text: &str) -> String {
    match wire {
        Wire::OpenAi => {
            sse(&json!({ "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 1_731_000_000,
            "model": model, "choices": [{ "index": 0, "delta": { "reasoning_content": text }, "finish_reason": null }] }))
        }
        Wire::Anthropic => event(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "thinking_delta", "thinking": text } }),
        ),
        Wire::Gemini => sse(
            &json!({ "candidates": [{ "content": { "parts": [{ "text": text, "thought": true }], "role": "model" }, "index": 0 }],
            "modelVersion": model, "responseId": "standin" }),
        ),
    }
}

/// The streamed answer.
pub(crate) fn frames(wire: Wire, model: &str, a: &Answer, include_usage: bool) -> Frames {
    match wire {
        Wire::OpenAi => {
            let chunk = |delta: Value, finish: Option<&str>| {
                json!({ "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 1_731_000_000,
                        "model": model, "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }] })
            };
            let mut head = vec![sse(&chunk(json!({ "role": "assistant", "content": "" }), None))];
            head.extend(a.pieces.iter().map(|p| sse(&chunk(json!({ "content": p }), None))));
            if let Some((name, args)) = &a.tool_call {
                head.push(sse(&chunk(
                    json!({ "tool_calls": [{ "index": 0, "id": "call_standin", "type": "function", "function": { "name": name, "arguments": "" } }] }),
                    None,
                )));
                let args = args.to_string();
                let (x, y) = args.split_at(args.len() / 2);
                for piece in [x, y] {
                    head.push(sse(&chunk(
                        json!({ "tool_calls": [{ "index": 0, "function": { "arguments": piece } }] }),
                        None,
                    )));
                }
            }
            let mut tail = vec![sse(&chunk(json!({}), Some(a.finish)))];
            if include_usage {
                tail.push(sse(
                    &json!({ "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 1_731_000_000,
                    "model": model, "choices": [], "usage": { "prompt_tokens": a.input_tokens,
                    "completion_tokens": a.output_tokens, "total_tokens": a.input_tokens + a.output_tokens } }),
                ));
            }
            Frames { head, tail, end: Some("data: [DONE]\n\n".to_owned()) }
        }
        Wire::Anthropic => {
            let mut head = vec![event(
                "message_start",
                &json!({ "type": "message_start", "message": { "id": "msg_standin", "type": "message", "role": "assistant",
                    "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
                    "usage": { "input_tokens": a.input_tokens, "output_tokens": 1 } } }),
            )];
            let mut index = 0;
            if !a.pieces.is_empty() {
                head.push(event("content_block_start", &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } })));
                head.push(event("ping", &json!({ "type": "ping" })));
                for p in &a.pieces {
                    head.push(event(
                        "content_block_delta",
                        &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": p } }),
                    ));
                }
                head.push(event("content_block_stop", &json!({ "type": "content_block_stop", "index": 0 })));
                index = 1;
            }
            if let Some((name, args)) = &a.tool_call {
                head.push(event(
                    "content_block_start",
                    &json!({ "type": "content_block_start", "index": index,
                    "content_block": { "type": "tool_use", "id": "toolu_standin", "name": name, "input": {} } }),
                ));
                let args = args.to_string();
                let (x, y) = args.split_at(args.len() / 2);
                for piece in [x, y] {
                    head.push(event(
                        "content_block_delta",
                        &json!({ "type": "content_block_delta", "index": index,
                        "delta": { "type": "input_json_delta", "partial_json": piece } }),
                    ));
                }
                head.push(event("content_block_stop", &json!({ "type": "content_block_stop", "index": index })));
            }
            let tail = vec![event(
                "message_delta",
                &json!({ "type": "message_delta", "delta": { "stop_reason": anthropic_stop(a.finish), "stop_sequence": null },
                         "usage": { "output_tokens": a.output_tokens } }),
            )];
            Frames { head, tail, end: Some(event("message_stop", &json!({ "type": "message_stop" }))) }
        }
        Wire::Gemini => {
            let chunk = |parts: Value| {
                json!({ "candidates": [{ "content": { "parts": parts, "role": "model" }, "index": 0 }],
                        "usageMetadata": { "promptTokenCount": a.input_tokens, "totalTokenCount": a.input_tokens },
                        "modelVersion": model, "responseId": "standin" })
            };
            let mut head: Vec<String> = a.pieces.iter().map(|p| sse(&chunk(json!([{ "text": p }])))).collect();
            if let Some((name, args)) = &a.tool_call {
                head.push(sse(&chunk(json!([{ "functionCall": { "name": name, "args": args } }]))));
            }
            // The last chunk carries the finish reason and the full usage;
            // the body's end is the stream's end (Gemini has no marker).
            let end = json!({ "candidates": [{ "content": { "parts": [{ "text": "" }], "role": "model" },
                              "finishReason": gemini_finish(a.finish), "index": 0 }],
                              "usageMetadata": gemini_usage(a), "modelVersion": model, "responseId": "standin" });
            Frames { head, tail: vec![sse(&end)], end: None }
        }
    }
}

/// Which canned error a provider sends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ErrorKind {
    Auth,
    BadRequest,
    RateLimited,
    Overloaded,
    Server,
    ContextLength,
    ContentPolicy,
}

/// A provider's error answer: status and body, in its real shape.
pub(crate) fn error(wire: Wire, kind: ErrorKind, message: &str) -> (u16, Value) {
    use ErrorKind as K;
    match wire {
        Wire::OpenAi => {
            let (status, kind, code, message) = match kind {
                K::Auth => {
                    (401, "invalid_request_error", Some("invalid_api_key"), "Incorrect API key provided: te******ey.")
                }
                K::BadRequest => (400, "invalid_request_error", None, message),
                K::RateLimited => (429, "requests", Some("rate_limit_exceeded"), "Rate limit reached for requests"),
                K::Overloaded => {
                    (503, "server_error", None, "The engine is currently overloaded, please try again later")
                }
                K::Server => (500, "server_error", None, "The server had an error while processing your request."),
                K::ContextLength => (
                    400,
                    "invalid_request_error",
                    Some("context_length_exceeded"),
                    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                ),
                K::ContentPolicy => (
                    400,
                    "invalid_request_error",
                    Some("content_policy_violation"),
                    "Your request was rejected as a result of our safety system.",
                ),
            };
            (status, json!({ "error": { "message": message, "type": kind, "param": null, "code": code } }))
        }
        Wire::Anthropic => {
            let (status, kind, message) = match kind {
                K::Auth => (401, "authentication_error", "invalid x-api-key"),
                K::BadRequest | K::ContentPolicy => (400, "invalid_request_error", message),
                K::RateLimited => {
                    (429, "rate_limit_error", "Number of requests has exceeded your per-minute rate limit")
                }
                K::Overloaded => (529, "overloaded_error", "Overloaded"),
                K::Server => (500, "api_error", "Internal server error"),
                K::ContextLength => {
                    (400, "invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum")
                }
            };
            (status, json!({ "type": "error", "error": { "type": kind, "message": message } }))
        }
        Wire::Gemini => {
            let (status, code, message) = match kind {
                K::Auth => (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
                K::BadRequest | K::ContentPolicy => (400, "INVALID_ARGUMENT", message),
                K::RateLimited => (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
                K::Overloaded => (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
                K::Server => (500, "INTERNAL", "An internal error has occurred."),
                K::ContextLength => (
                    400,
                    "INVALID_ARGUMENT",
                    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
                ),
            };
            (status, json!({ "error": { "code": status, "message": message, "status": code } }))
        }
    }
}
