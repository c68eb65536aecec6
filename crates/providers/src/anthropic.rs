//! Anthropic Messages (`POST /v1/messages`): pure translation to and from
//! the wire format, and the adapter over the shared transport.
//!
//! Differences it bridges: the system prompt is a field, not a message; tool
//! results are `tool_result` blocks of a user turn; tool arguments are JSON
//! objects, not text; `max_tokens` is required. Anthropic has no JSON mode:
//! a JSON-schema answer is asked for as a forced call of a tool named after
//! the schema, and that call's input is returned as the answer's text (the
//! way LiteLLM bridges it); `json_object` adds an instruction to the system
//! prompt.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::transport::{HttpConfig, StreamDecoder, Transport, malformed};
use crate::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Part, Provider, ProviderError, ProviderErrorKind,
    ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, Usage, UsageEstimate,
};

/// The API version this adapter speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` when the request names none (Anthropic requires one).
const DEFAULT_MAX_TOKENS: u32 = 4096;

const JSON_OBJECT_INSTRUCTION: &str = "Respond with a single JSON object and nothing else.";

/// An Anthropic Messages provider.
#[derive(Clone, Debug)]
pub struct AnthropicProvider {
    transport: Transport,
}

impl AnthropicProvider {
    /// A provider for `config`, with its own connection pool.
    ///
    /// # Errors
    /// A `base_url` that is not an http(s) URL, or a TLS set-up failure.
    pub fn new(config: HttpConfig) -> Result<Self, String> {
        Ok(Self { transport: Transport::new(config)? })
    }

    async fn send(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ProviderError> {
        let uri = self.transport.uri("/messages")?;
        let key = self.transport.config.api_key.expose();
        let mut headers = vec![("anthropic-version", ANTHROPIC_VERSION)];
        if !key.is_empty() {
            headers.push(("x-api-key", key));
        }
        self.transport.post(uri, &headers, &to_wire(request, stream)).await
    }
}

impl Provider for AnthropicProvider {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let response = self.send(request, false).await?;
        let body = self.transport.read(response).await?;
        from_wire(request, &body)
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let response = self.send(request, true).await?;
        Ok(self.transport.stream(response, Decoder::new(request)))
    }
}

/// The name of the tool that carries a JSON-schema answer, if the request
/// asks for one.
fn schema_tool(request: &ChatRequest) -> Option<&str> {
    match &request.response_format {
        Some(ResponseFormat::JsonSchema { name, .. }) => Some(name),
        _ => None,
    }
}

fn image_block(url: &str) -> Value {
    // `data:<media type>;base64,<data>` is sent inline; anything else by URL.
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return json!({ "type": "image", "source": { "type": "base64", "media_type": media_type, "data": data } });
    }
    json!({ "type": "image", "source": { "type": "url", "url": url } })
}

/// The canonical request in Anthropic's format.
#[must_use]
pub fn to_wire(request: &ChatRequest, stream: bool) -> Value {
    let mut system: Vec<String> = Vec::new();
    // (role, blocks); consecutive turns of one role are merged, and tool
    // results become blocks of a user turn.
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in &request.messages {
        let (role, blocks) = match m.role {
            Role::System => {
                system.push(m.text_content());
                continue;
            }
            Role::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                    "content": m.text_content(),
                })],
            ),
            Role::User | Role::Assistant => {
                let role = if m.role == Role::User { "user" } else { "assistant" };
                let mut blocks: Vec<Value> = m
                    .content
                    .iter()
                    .filter(|p| !matches!(p, Part::Text { text } if text.is_empty()))
                    .map(|p| match p {
                        Part::Text { text } => json!({ "type": "text", "text": text }),
                        Part::Image { url } => image_block(url),
                    })
                    .collect();
                blocks.extend(m.tool_calls.iter().map(|c| {
                    let input = serde_json::from_str::<Value>(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": input })
                }));
                (role, blocks)
            }
        };
        match turns.last_mut() {
            Some((r, existing)) if *r == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if matches!(request.response_format, Some(ResponseFormat::JsonObject)) {
        system.push(JSON_OBJECT_INSTRUCTION.to_owned());
    }
    let messages: Vec<Value> =
        turns.into_iter().map(|(role, blocks)| json!({ "role": role, "content": blocks })).collect();
    let mut body = json!({
        "model": request.model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    let Some(obj) = body.as_object_mut() else { return body };
    if !system.is_empty() {
        obj.insert("system".into(), json!(system.join("\n\n")));
    }
    if !request.stop.is_empty() {
        obj.insert("stop_sequences".into(), json!(request.stop));
    }
    if let Some(t) = request.temperature {
        // Anthropic's range is 0–1; OpenAI's 0–2 is scaled down.
        obj.insert("temperature".into(), json!((t / 2.0).clamp(0.0, 1.0)));
    }
    if let Some(p) = request.top_p {
        obj.insert("top_p".into(), json!(p));
    }
    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| {
            let mut tool = json!({ "name": t.name, "input_schema": t.parameters });
            if let (Some(d), Some(o)) = (&t.description, tool.as_object_mut()) {
                o.insert("description".into(), json!(d));
            }
            tool
        })
        .collect();
    let mut choice = request.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => json!({ "type": "auto" }),
        ToolChoice::None => json!({ "type": "none" }),
        ToolChoice::Required => json!({ "type": "any" }),
        ToolChoice::Tool(name) => json!({ "type": "tool", "name": name }),
    });
    if let Some(ResponseFormat::JsonSchema { name, schema, .. }) = &request.response_format {
        tools.push(json!({ "name": name, "description": "Respond with the answer as this tool's input.", "input_schema": schema }));
        choice = Some(json!({ "type": "tool", "name": name }));
    }
    if !tools.is_empty() {
        obj.insert("tools".into(), json!(tools));
    }
    if let Some(choice) = choice {
        obj.insert("tool_choice".into(), choice);
    }
    if stream {
        obj.insert("stream".into(), json!(true));
    }
    body
}

/// Anthropic's `stop_reason` as canonical.
#[must_use]
pub fn finish_reason(stop_reason: Option<&str>) -> FinishReason {
    match stop_reason {
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// The canonical finish reason as Anthropic's `stop_reason`.
#[must_use]
pub const fn stop_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
        FinishReason::Stop => "end_turn",
    }
}

#[derive(Deserialize)]
struct WireMessage {
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Clone, Copy, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Every prompt token is billed as input, cached or not.
    fn input(self) -> Option<u64> {
        self.input_tokens
            .map(|n| n + self.cache_creation_input_tokens.unwrap_or(0) + self.cache_read_input_tokens.unwrap_or(0))
    }
}

/// Parses a non-streamed answer.
///
/// # Errors
/// A body that is not a message.
pub fn from_wire(request: &ChatRequest, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireMessage = serde_json::from_slice(body).map_err(|_| malformed("response"))?;
    let schema_tool = schema_tool(request);
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    let mut finish = finish_reason(wire.stop_reason.as_deref());
    for block in wire.content {
        match block {
            WireBlock::Text { text } => content.push_str(&text),
            WireBlock::ToolUse { name, input, .. } if Some(name.as_str()) == schema_tool => {
                // The structured answer: its input is the JSON asked for.
                content = input.to_string();
                finish = FinishReason::Stop;
            }
            WireBlock::ToolUse { id, name, input } => {
                tool_calls.push(ToolCall { id, name, arguments: input.to_string() });
            }
            WireBlock::Other => {}
        }
    }
    let estimate = UsageEstimate::of(request).usage(&content);
    let usage = wire.usage.unwrap_or_default();
    let usage = Usage {
        input_tokens: usage.input().unwrap_or(estimate.input_tokens),
        output_tokens: usage.output_tokens.unwrap_or(estimate.output_tokens),
    };
    Ok(ChatResponse { content, tool_calls, finish_reason: finish, usage })
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireStart,
    },
    ContentBlockStart {
        index: u32,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: WireDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: WireStop,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireStart {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct WireStop {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

/// Decodes Anthropic's events; `message_stop` ends the stream.
struct Decoder {
    schema_tool: Option<String>,
    /// Anthropic's content-block index → the canonical tool-call index, for
    /// tool-use blocks; the schema tool's block maps to `None` (its input
    /// streams as text).
    blocks: Vec<(u32, Option<u32>)>,
    next_call: u32,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    finish: FinishReason,
    /// A stop reason arrived (`message_delta`): the answer is complete.
    stopped: bool,
    estimate: UsageEstimate,
}

impl Decoder {
    fn new(request: &ChatRequest) -> Self {
        Self {
            schema_tool: schema_tool(request).map(str::to_owned),
            blocks: Vec::new(),
            next_call: 0,
            input_tokens: None,
            output_tokens: None,
            finish: FinishReason::Stop,
            stopped: false,
            estimate: UsageEstimate::of(request),
        }
    }

    fn block(&self, index: u32) -> Option<Option<u32>> {
        self.blocks.iter().find(|(i, _)| *i == index).map(|(_, call)| *call)
    }
}

impl StreamDecoder for Decoder {
    fn data(&mut self, payload: &str) -> Result<Vec<StreamEvent>, ProviderError> {
        let event: WireEvent = serde_json::from_str(payload).map_err(|_| malformed("stream event"))?;
        let mut out = Vec::new();
        match event {
            WireEvent::MessageStart { message } => {
                if let Some(u) = message.usage {
                    self.input_tokens = u.input();
                }
            }
            WireEvent::ContentBlockStart { index, content_block: WireBlock::ToolUse { id, name, .. } } => {
                if self.schema_tool.as_deref() == Some(name.as_str()) {
                    self.blocks.push((index, None));
                } else {
                    let call = self.next_call;
                    self.next_call += 1;
                    self.blocks.push((index, Some(call)));
                    out.push(StreamEvent::ToolCallDelta {
                        index: call,
                        id: Some(id),
                        name: Some(name),
                        arguments: String::new(),
                    });
                }
            }
            WireEvent::ContentBlockDelta { delta: WireDelta::TextDelta { text }, .. } if !text.is_empty() => {
                self.estimate.add_output(&text);
                out.push(StreamEvent::Delta(text));
            }
            WireEvent::ContentBlockDelta { index, delta: WireDelta::InputJsonDelta { partial_json } } => {
                self.estimate.add_output(&partial_json);
                match self.block(index) {
                    Some(Some(call)) => out.push(StreamEvent::ToolCallDelta {
                        index: call,
                        id: None,
                        name: None,
                        arguments: partial_json,
                    }),
                    Some(None) if !partial_json.is_empty() => out.push(StreamEvent::Delta(partial_json)),
                    _ => {}
                }
            }
            WireEvent::ContentBlockDelta { delta: WireDelta::ThinkingDelta { thinking }, .. }
                if !thinking.is_empty() =>
            {
                self.estimate.add_output(&thinking);
                out.push(StreamEvent::Thinking(thinking));
            }
            WireEvent::MessageDelta { delta, usage } => {
                if let Some(r) = delta.stop_reason.as_deref() {
                    self.stopped = true;
                    self.finish = finish_reason(Some(r));
                    if self.finish == FinishReason::ToolCalls && self.next_call == 0 {
                        self.finish = FinishReason::Stop; // only the schema tool was called
                    }
                }
                if let Some(u) = usage {
                    self.output_tokens = u.output_tokens.or(self.output_tokens);
                    self.input_tokens = u.input().or(self.input_tokens);
                }
            }
            WireEvent::MessageStop => out.push(self.done()),
            WireEvent::Error { error } => {
                let kind = match error.kind.as_str() {
                    "rate_limit_error" => ProviderErrorKind::RateLimited,
                    "invalid_request_error" => ProviderErrorKind::InvalidRequest,
                    _ => ProviderErrorKind::Unavailable,
                };
                let mut e = ProviderError::new(kind, "the upstream provider failed mid-stream");
                e.upstream_code = Some(error.kind);
                e.upstream_message = Some(error.message.chars().take(500).collect());
                return Err(e);
            }
            WireEvent::ContentBlockStart { .. } | WireEvent::ContentBlockDelta { .. } | WireEvent::Other => {}
        }
        Ok(out)
    }

    fn end(&mut self) -> Option<StreamEvent> {
        // No message_stop: complete when the stop reason came, else cut off.
        self.stopped.then(|| self.done())
    }
}

impl Decoder {
    fn done(&self) -> StreamEvent {
        let estimate = self.estimate.produced();
        StreamEvent::Done {
            finish_reason: self.finish,
            usage: Usage {
                input_tokens: self.input_tokens.unwrap_or(estimate.input_tokens),
                output_tokens: self.output_tokens.unwrap_or(estimate.output_tokens),
            },
            estimated: self.input_tokens.is_none() || self.output_tokens.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Tool};

    fn req() -> ChatRequest {
        let mut r = ChatRequest::new(
            "claude-sonnet-4-5".into(),
            vec![Message::text(Role::System, "be brief"), Message::text(Role::User, "Hi")],
        );
        r.max_tokens = Some(64);
        r
    }

    #[test]
    fn system_tools_and_tool_results_translate() {
        let mut r = req();
        r.messages.push(Message {
            role: Role::Assistant,
            content: vec![Part::Text { text: "Let me look.".into() }],
            tool_calls: vec![ToolCall {
                id: "toolu_1".into(),
                name: "weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }],
            tool_call_id: None,
        });
        r.messages.push(Message { tool_call_id: Some("toolu_1".into()), ..Message::text(Role::Tool, "18C") });
        r.messages.push(Message {
            role: Role::User,
            content: vec![Part::Image { url: "data:image/png;base64,iVBORw0KGgo=".into() }],
            tool_calls: vec![],
            tool_call_id: None,
        });
        r.tools = vec![Tool { name: "weather".into(), description: None, parameters: json!({ "type": "object" }) }];
        r.tool_choice = Some(ToolChoice::Required);
        r.temperature = Some(1.0);
        let v = to_wire(&r, true);
        assert_eq!(v["system"], "be brief");
        assert_eq!(v["max_tokens"], 64);
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["messages"][0], json!({ "role": "user", "content": [{ "type": "text", "text": "Hi" }] }));
        assert_eq!(
            v["messages"][1]["content"][1],
            json!({ "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris" } })
        );
        // The tool result and the image merge into one user turn.
        assert_eq!(
            v["messages"][2]["content"][0],
            json!({ "type": "tool_result", "tool_use_id": "toolu_1", "content": "18C" })
        );
        assert_eq!(
            v["messages"][2]["content"][1]["source"],
            json!({ "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" })
        );
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert_eq!(v["tools"][0], json!({ "name": "weather", "input_schema": { "type": "object" } }));
        assert_eq!(v["tool_choice"], json!({ "type": "any" }));
        assert_eq!(v["stream"], true);
    }

    #[test]
    fn json_schema_rides_on_a_forced_tool() {
        let mut r = req();
        r.response_format = Some(ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: json!({ "type": "object" }),
            strict: true,
        });
        let v = to_wire(&r, false);
        assert_eq!(v["tool_choice"], json!({ "type": "tool", "name": "answer" }));
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":"toolu_9","name":"answer","input":{"ok":true}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":30,"output_tokens":9}}"#;
        let resp = from_wire(&r, body).unwrap();
        assert_eq!((resp.content.as_str(), resp.finish_reason), ("{\"ok\":true}", FinishReason::Stop));
        assert!(resp.tool_calls.is_empty());
    }

    #[test]
    fn parses_a_real_message_body() {
        let body = br#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
            "content":[{"type":"text","text":"I'll check."},{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"location":"San Francisco, CA"}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":91,"service_tier":"standard"}}"#;
        let r = from_wire(&req(), body).unwrap();
        assert_eq!(r.content, "I'll check.");
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.tool_calls[0].arguments, "{\"location\":\"San Francisco, CA\"}");
        assert_eq!(r.usage, Usage { input_tokens: 482, output_tokens: 91 });
        assert!(from_wire(&req(), b"{\"type\":\"error\"}").is_err());
    }

    #[test]
    fn a_real_event_stream_decodes() {
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut d = Decoder::new(&req());
        let out: Vec<StreamEvent> = events.iter().flat_map(|e| d.data(e).unwrap()).collect();
        assert_eq!(
            out,
            vec![
                StreamEvent::Delta("Hello".into()),
                StreamEvent::ToolCallDelta {
                    index: 0,
                    id: Some("toolu_1".into()),
                    name: Some("f".into()),
                    arguments: String::new()
                },
                StreamEvent::ToolCallDelta { index: 0, id: None, name: None, arguments: "{\"a\":".into() },
                StreamEvent::ToolCallDelta { index: 0, id: None, name: None, arguments: "1}".into() },
                StreamEvent::Done {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Usage { input_tokens: 25, output_tokens: 15 },
                    estimated: false,
                },
            ]
        );
        let e = Decoder::new(&req())
            .data(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
            .unwrap_err();
        assert_eq!(e.upstream_code.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn thinking_is_progress_and_a_stop_reason_completes_a_stream_without_message_stop() {
        let mut d = Decoder::new(&req());
        d.data(r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"c","stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#).unwrap();
        d.data(r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#)
            .unwrap();
        let e = d
            .data(r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm."}}"#)
            .unwrap();
        assert_eq!(e, vec![StreamEvent::Thinking("Hmm.".into())]);
        d.data(r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}"#).unwrap();
        assert!(d.end().is_none(), "no stop reason: a cut stream");
        d.data(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":7}}"#).unwrap();
        assert_eq!(
            d.end(),
            Some(StreamEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: Usage { input_tokens: 25, output_tokens: 7 },
                estimated: false
            })
        );
    }
}
