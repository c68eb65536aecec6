//! OpenAI-compatible chat completions (OpenAI, Together, Groq, Fireworks,
//! vLLM, Ollama, …): pure translation to and from the wire format, and the
//! adapter over the shared transport.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::transport::{HttpConfig, StreamDecoder, Transport, malformed};
use crate::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Part, Provider, ProviderError, ResponseFormat, Role,
    StreamEvent, ToolCall, ToolChoice, Usage, UsageEstimate,
};

/// An OpenAI-compatible provider.
#[derive(Clone, Debug)]
pub struct OpenAiProvider {
    transport: Transport,
}

impl OpenAiProvider {
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
        let uri = self.transport.uri("/chat/completions")?;
        let key = self.transport.config.api_key.expose();
        let bearer = format!("Bearer {key}");
        let headers: &[(&str, &str)] = if key.is_empty() { &[] } else { &[("authorization", &bearer)] };
        self.transport.post(uri, headers, &to_wire(request, stream)).await
    }
}

impl Provider for OpenAiProvider {
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

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// The canonical request in OpenAI's format.
#[must_use]
pub fn to_wire(request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| {
            let text_only = m.content.iter().all(|p| matches!(p, Part::Text { .. }));
            let content = if text_only {
                json!(m.text_content())
            } else {
                m.content
                    .iter()
                    .map(|p| match p {
                        Part::Text { text } => json!({ "type": "text", "text": text }),
                        Part::Image { url } => json!({ "type": "image_url", "image_url": { "url": url } }),
                    })
                    .collect()
            };
            let mut out = json!({ "role": role(m.role), "content": content });
            if let Some(obj) = out.as_object_mut() {
                if !m.tool_calls.is_empty() {
                    if m.content.is_empty() {
                        obj.insert("content".into(), Value::Null);
                    }
                    let calls: Vec<Value> = m
                        .tool_calls
                        .iter()
                        .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
                        .collect();
                    obj.insert("tool_calls".into(), json!(calls));
                }
                if let Some(id) = &m.tool_call_id {
                    obj.insert("tool_call_id".into(), json!(id));
                }
            }
            out
        })
        .collect();
    let mut body = json!({ "model": request.model, "messages": messages, "stream": stream });
    if let Some(obj) = body.as_object_mut() {
        if let Some(n) = request.max_tokens {
            obj.insert("max_tokens".into(), json!(n));
        }
        if !request.stop.is_empty() {
            obj.insert("stop".into(), json!(request.stop));
        }
        if let Some(t) = request.temperature {
            obj.insert("temperature".into(), json!(t));
        }
        if let Some(p) = request.top_p {
            obj.insert("top_p".into(), json!(p));
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    let mut f = json!({ "name": t.name, "parameters": t.parameters });
                    if let (Some(d), Some(o)) = (&t.description, f.as_object_mut()) {
                        o.insert("description".into(), json!(d));
                    }
                    json!({ "type": "function", "function": f })
                })
                .collect();
            obj.insert("tools".into(), json!(tools));
        }
        if let Some(choice) = &request.tool_choice {
            let choice = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(name) => json!({ "type": "function", "function": { "name": name } }),
            };
            obj.insert("tool_choice".into(), choice);
        }
        match &request.response_format {
            None => {}
            Some(ResponseFormat::JsonObject) => {
                obj.insert("response_format".into(), json!({ "type": "json_object" }));
            }
            Some(ResponseFormat::JsonSchema { name, schema, strict }) => {
                obj.insert(
                    "response_format".into(),
                    json!({ "type": "json_schema", "json_schema": { "name": name, "schema": schema, "strict": strict } }),
                );
            }
        }
        if stream {
            obj.insert("stream_options".into(), json!({ "include_usage": true }));
        }
    }
    body
}

#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    delta: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// OpenAI's `finish_reason` as canonical.
#[must_use]
pub fn finish_reason(s: Option<&str>) -> FinishReason {
    match s {
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// Parses a non-streamed answer. Missing usage is estimated.
///
/// # Errors
/// A body that is not a chat completion.
pub fn from_wire(request: &ChatRequest, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireCompletion = serde_json::from_slice(body).map_err(|_| malformed("response"))?;
    let choice = wire.choices.into_iter().next().ok_or_else(|| malformed("response (no choices)"))?;
    let (content, tool_calls) = choice.message.map_or_else(
        || (String::new(), Vec::new()),
        |m| {
            let calls = m
                .tool_calls
                .into_iter()
                .map(|c| {
                    let f = c.function.unwrap_or(WireFunction { name: None, arguments: None });
                    ToolCall {
                        id: c.id.unwrap_or_default(),
                        name: f.name.unwrap_or_default(),
                        arguments: f.arguments.unwrap_or_default(),
                    }
                })
                .collect();
            (m.content.unwrap_or_default(), calls)
        },
    );
    let usage = wire.usage.map_or_else(
        || UsageEstimate::of(request).usage(&content),
        |u| Usage { input_tokens: u.prompt_tokens, output_tokens: u.completion_tokens },
    );
    Ok(ChatResponse { content, tool_calls, finish_reason: finish_reason(choice.finish_reason.as_deref()), usage })
}

/// Decodes OpenAI's chunks; `[DONE]` ends the stream.
struct Decoder {
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    estimate: UsageEstimate,
}

impl Decoder {
    fn new(request: &ChatRequest) -> Self {
        Self { finish: None, usage: None, estimate: UsageEstimate::of(request) }
    }
}

impl StreamDecoder for Decoder {
    fn data(&mut self, payload: &str) -> Result<Vec<StreamEvent>, ProviderError> {
        if payload == "[DONE]" {
            return Ok(vec![self.done(self.finish.unwrap_or(FinishReason::Stop))]);
        }
        let wire: WireCompletion = serde_json::from_str(payload).map_err(|_| malformed("stream chunk"))?;
        if let Some(u) = wire.usage {
            self.usage = Some(Usage { input_tokens: u.prompt_tokens, output_tokens: u.completion_tokens });
        }
        let mut events = Vec::new();
        let Some(choice) = wire.choices.into_iter().next() else { return Ok(events) };
        if let Some(f) = choice.finish_reason.as_deref() {
            self.finish = Some(finish_reason(Some(f)));
        }
        if let Some(delta) = choice.delta {
            // vLLM, DeepSeek and others: `reasoning_content`; OpenRouter: `reasoning`.
            if let Some(thought) = delta.reasoning_content.or(delta.reasoning).filter(|t| !t.is_empty()) {
                self.estimate.add_output(&thought);
                events.push(StreamEvent::Thinking(thought));
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.estimate.add_output(&text);
                events.push(StreamEvent::Delta(text));
            }
            for (i, c) in delta.tool_calls.into_iter().enumerate() {
                let f = c.function.unwrap_or(WireFunction { name: None, arguments: None });
                let arguments = f.arguments.unwrap_or_default();
                self.estimate.add_output(&arguments);
                events.push(StreamEvent::ToolCallDelta {
                    index: c.index.unwrap_or_else(|| u32::try_from(i).unwrap_or(u32::MAX)),
                    id: c.id,
                    name: f.name,
                    arguments,
                });
            }
        }
        Ok(events)
    }

    fn end(&mut self) -> Option<StreamEvent> {
        // No [DONE]: complete when a finish reason came, else cut off.
        self.finish.map(|f| self.done(f))
    }
}

impl Decoder {
    fn done(&self, finish_reason: FinishReason) -> StreamEvent {
        match self.usage {
            Some(usage) => StreamEvent::Done { finish_reason, usage, estimated: false },
            None => StreamEvent::Done { finish_reason, usage: self.estimate.produced(), estimated: true },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Tool};

    fn req() -> ChatRequest {
        let mut r = ChatRequest::new(
            "gpt-4o-mini".into(),
            vec![Message::text(Role::System, "be brief"), Message::text(Role::User, "Hi")],
        );
        r.max_tokens = Some(50);
        r.stop = vec!["\n\n".into()];
        r.temperature = Some(0.2);
        r
    }

    #[test]
    fn request_translates_to_openai_format() {
        let v = to_wire(&req(), true);
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["messages"][0], json!({ "role": "system", "content": "be brief" }));
        assert_eq!(v["max_tokens"], 50);
        assert_eq!(v["stop"], json!(["\n\n"]));
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(v.get("top_p").is_none() && v.get("tools").is_none());
    }

    #[test]
    fn tools_images_and_json_mode_translate() {
        let mut r = req();
        r.messages.push(Message {
            role: Role::User,
            content: vec![
                Part::Text { text: "what is this?".into() },
                Part::Image { url: "https://example.com/cat.png".into() },
            ],
            tool_calls: vec![],
            tool_call_id: None,
        });
        r.messages.push(Message {
            role: Role::Assistant,
            content: vec![],
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "lookup".into(),
                arguments: "{\"q\":\"cat\"}".into(),
            }],
            tool_call_id: None,
        });
        r.messages.push(Message { tool_call_id: Some("call_1".into()), ..Message::text(Role::Tool, "a cat") });
        r.tools = vec![Tool {
            name: "lookup".into(),
            description: Some("Looks things up".into()),
            parameters: json!({ "type": "object", "properties": { "q": { "type": "string" } } }),
        }];
        r.tool_choice = Some(ToolChoice::Tool("lookup".into()));
        r.response_format = Some(ResponseFormat::JsonObject);
        let v = to_wire(&r, false);
        assert_eq!(
            v["messages"][2]["content"][1],
            json!({ "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } })
        );
        assert_eq!(v["messages"][3]["content"], Value::Null);
        assert_eq!(v["messages"][3]["tool_calls"][0]["function"]["arguments"], "{\"q\":\"cat\"}");
        assert_eq!(v["messages"][4], json!({ "role": "tool", "tool_call_id": "call_1", "content": "a cat" }));
        assert_eq!(v["tools"][0]["function"]["description"], "Looks things up");
        assert_eq!(v["tool_choice"], json!({ "type": "function", "function": { "name": "lookup" } }));
        assert_eq!(v["response_format"], json!({ "type": "json_object" }));
    }

    #[test]
    fn parses_a_real_completion_body() {
        // The shape of an OpenAI chat.completion response.
        let body = br#"{"id":"chatcmpl-AbC","object":"chat.completion","created":1731000000,"model":"gpt-4o-mini-2024-07-18",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help?","refusal":null},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":19,"completion_tokens":7,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}"#;
        let r = from_wire(&req(), body).unwrap();
        assert_eq!(r.content, "Hello! How can I help?");
        assert_eq!(r.usage, Usage { input_tokens: 19, output_tokens: 7 });
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert!(from_wire(&req(), b"{\"nope\":1}").is_err());
    }

    #[test]
    fn parses_a_real_tool_call_body() {
        let body = br#"{"id":"chatcmpl-T","object":"chat.completion","created":1731000000,"model":"gpt-4o-2024-08-06",
            "choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc","type":"function",
            "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}],"refusal":null},"logprobs":null,"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":80,"completion_tokens":17,"total_tokens":97}}"#;
        let r = from_wire(&req(), body).unwrap();
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                id: "call_abc".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into()
            }]
        );
    }

    #[test]
    fn stream_chunks_carry_deltas_tool_calls_finish_and_usage() {
        let mut d = Decoder::new(&req());
        let e = d.data(r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(e, vec![StreamEvent::Delta("Hel".into())]);
        let e = d.data(r#"{"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#).unwrap();
        assert_eq!(
            e,
            vec![StreamEvent::ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: String::new()
            }]
        );
        let e = d.data(r#"{"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]},"finish_reason":null}]}"#).unwrap();
        assert_eq!(
            e,
            vec![StreamEvent::ToolCallDelta { index: 0, id: None, name: None, arguments: "{\"a\":1}".into() }]
        );
        d.data(r#"{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#).unwrap();
        d.data(r#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#)
            .unwrap();
        let done = d.data("[DONE]").unwrap();
        assert_eq!(
            done,
            vec![StreamEvent::Done {
                finish_reason: FinishReason::ToolCalls,
                usage: Usage { input_tokens: 3, output_tokens: 2 },
                estimated: false,
            }]
        );
        assert_eq!(d.data("{not json").unwrap_err().kind, crate::ProviderErrorKind::Malformed);
    }

    #[test]
    fn a_stream_without_done_is_complete_after_a_finish_reason_and_cut_before_one() {
        let chunk = |delta: &str, finish: &str| {
            format!(r#"{{"id":"x","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#)
        };
        // Reasoning, then text, then the connection closes: cut.
        let mut d = Decoder::new(&req());
        let e = d.data(&chunk(r#"{"role":"assistant","reasoning_content":"Let me think."}"#, "null")).unwrap();
        assert_eq!(e, vec![StreamEvent::Thinking("Let me think.".into())]);
        assert_eq!(
            d.data(&chunk(r#"{"reasoning":"More."}"#, "null")).unwrap(),
            vec![StreamEvent::Thinking("More.".into())]
        );
        d.data(&chunk(r#"{"content":"Hello there"}"#, "null")).unwrap();
        assert!(d.end().is_none(), "no finish reason: a cut stream");
        // The same with a finish reason and no usage: complete, usage estimated.
        d.data(&chunk("{}", r#""stop""#)).unwrap();
        let Some(StreamEvent::Done { finish_reason, usage, estimated }) = d.end() else { panic!("complete") };
        assert_eq!(finish_reason, FinishReason::Stop);
        assert!(estimated && usage.output_tokens > 0 && usage.input_tokens > 0, "{usage:?}");
        // With usage: the provider's counts.
        d.data(r#"{"id":"x","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#)
            .unwrap();
        assert_eq!(
            d.end(),
            Some(StreamEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: Usage { input_tokens: 9, output_tokens: 4 },
                estimated: false
            })
        );
    }
}
