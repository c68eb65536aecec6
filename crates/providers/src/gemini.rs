//! Google Gemini `generateContent` / `streamGenerateContent?alt=sse`: pure
//! translation to and from the wire format, and the adapter over the shared
//! transport.
//!
//! Differences it bridges: roles are `user` and `model`; the system prompt is
//! `systemInstruction`; tool calls (`functionCall`) carry arguments as an
//! object and usually no id (ids `call_<n>` are made up, and a tool result
//! finds its function's name through the call it answers); images by URL are
//! `fileData`, `data:` URLs `inlineData`; JSON mode is
//! `responseMimeType`/`responseJsonSchema`. A stream has no end marker: it
//! ends properly when the body ends after a chunk with a finish reason.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::transport::{HttpConfig, StreamDecoder, Transport, malformed};
use crate::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Part, Provider, ProviderError, ProviderErrorKind,
    ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, Usage, UsageEstimate,
};

/// A Gemini provider.
#[derive(Clone, Debug)]
pub struct GeminiProvider {
    transport: Transport,
}

impl GeminiProvider {
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
        if !request.model.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
            return Err(ProviderError::new(ProviderErrorKind::InvalidRequest, "the upstream model name is not valid"));
        }
        let path = if stream {
            format!("/models/{}:streamGenerateContent?alt=sse", request.model)
        } else {
            format!("/models/{}:generateContent", request.model)
        };
        let uri = self.transport.uri(&path)?;
        let key = self.transport.config.api_key.expose();
        let headers: &[(&str, &str)] = if key.is_empty() { &[] } else { &[("x-goog-api-key", key)] };
        self.transport.post(uri, headers, &to_wire(request)).await
    }
}

impl Provider for GeminiProvider {
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

fn media_type_of(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    }
}

fn part(p: &Part) -> Value {
    match p {
        Part::Text { text } => json!({ "text": text }),
        Part::Image { url } => {
            if let Some(rest) = url.strip_prefix("data:")
                && let Some((media_type, data)) = rest.split_once(";base64,")
            {
                return json!({ "inlineData": { "mimeType": media_type, "data": data } });
            }
            json!({ "fileData": { "mimeType": media_type_of(url), "fileUri": url } })
        }
    }
}

/// The canonical request in Gemini's format.
#[must_use]
pub fn to_wire(request: &ChatRequest) -> Value {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in &request.messages {
        let (role, parts) = match m.role {
            Role::System => {
                system.push(json!({ "text": m.text_content() }));
                continue;
            }
            Role::Tool => {
                // Gemini answers a call by the function's name.
                let name = request
                    .messages
                    .iter()
                    .flat_map(|m| &m.tool_calls)
                    .find(|c| Some(&c.id) == m.tool_call_id.as_ref())
                    .map_or("", |c| c.name.as_str());
                let text = m.text_content();
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({ "result": text }));
                ("user", vec![json!({ "functionResponse": { "name": name, "response": response } })])
            }
            Role::User | Role::Assistant => {
                let role = if m.role == Role::User { "user" } else { "model" };
                let mut parts: Vec<Value> = m
                    .content
                    .iter()
                    .filter(|p| !matches!(p, Part::Text { text } if text.is_empty()))
                    .map(part)
                    .collect();
                parts.extend(m.tool_calls.iter().map(|c| {
                    let args = serde_json::from_str::<Value>(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    json!({ "functionCall": { "name": c.name, "args": args } })
                }));
                (role, parts)
            }
        };
        match contents.last_mut() {
            Some((r, existing)) if *r == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let contents: Vec<Value> =
        contents.into_iter().map(|(role, parts)| json!({ "role": role, "parts": parts })).collect();
    let mut body = json!({ "contents": contents });
    let Some(obj) = body.as_object_mut() else { return body };
    if !system.is_empty() {
        obj.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let mut generation = serde_json::Map::new();
    if let Some(n) = request.max_tokens {
        generation.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(t) = request.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        generation.insert("topP".into(), json!(p));
    }
    if !request.stop.is_empty() {
        generation.insert("stopSequences".into(), json!(request.stop));
    }
    match &request.response_format {
        None => {}
        Some(ResponseFormat::JsonObject) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            generation.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if !generation.is_empty() {
        obj.insert("generationConfig".into(), Value::Object(generation));
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({ "name": t.name, "parametersJsonSchema": t.parameters });
                if let (Some(desc), Some(o)) = (&t.description, d.as_object_mut()) {
                    o.insert("description".into(), json!(desc));
                }
                d
            })
            .collect();
        obj.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
    }
    if let Some(choice) = &request.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({ "mode": "AUTO" }),
            ToolChoice::None => json!({ "mode": "NONE" }),
            ToolChoice::Required => json!({ "mode": "ANY" }),
            ToolChoice::Tool(name) => json!({ "mode": "ANY", "allowedFunctionNames": [name] }),
        };
        obj.insert("toolConfig".into(), json!({ "functionCallingConfig": config }));
    }
    body
}

/// Gemini's `finishReason` as canonical.
#[must_use]
pub fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    prompt_feedback: Option<WireFeedback>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<WireCall>,
}

#[derive(Deserialize)]
struct WireCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Value,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl WireUsage {
    /// Thinking tokens are billed as output.
    const fn usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_token_count,
            output_tokens: self.candidates_token_count + self.thoughts_token_count,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// A prompt the provider blocked: not retryable, reason propagated.
fn blocked(reason: &str) -> ProviderError {
    let mut e = ProviderError::new(ProviderErrorKind::InvalidRequest, "the prompt was blocked by a content filter");
    e.upstream_code = Some("content_filter".to_owned());
    e.upstream_message = Some(format!("the prompt was blocked by a content filter ({reason})"));
    e
}

/// A function call as read: (id, if Gemini sent one; name; arguments as JSON text).
type ReadCall = (Option<String>, String, String);

/// What one response (or chunk) says.
#[derive(Default)]
struct Read {
    text: String,
    /// Thought summaries: progress, not the answer.
    thought: String,
    calls: Vec<ReadCall>,
    finish: Option<String>,
}

/// Reads one response (or chunk).
fn read(wire: WireResponse) -> Result<Read, ProviderError> {
    if let Some(reason) = wire.prompt_feedback.and_then(|f| f.block_reason) {
        return Err(blocked(&reason));
    }
    let mut read = Read::default();
    let Some(candidate) = wire.candidates.into_iter().next() else { return Ok(read) };
    for p in candidate.content.map(|c| c.parts).unwrap_or_default() {
        if let Some(t) = p.text {
            if p.thought == Some(true) { &mut read.thought } else { &mut read.text }.push_str(&t);
        }
        if let Some(c) = p.function_call {
            read.calls.push((c.id, c.name, c.args.to_string()));
        }
    }
    read.finish = candidate.finish_reason;
    Ok(read)
}

/// Parses a non-streamed answer.
///
/// # Errors
/// A body that is not a `GenerateContentResponse`, or a blocked prompt.
pub fn from_wire(request: &ChatRequest, body: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|_| malformed("response"))?;
    let usage = wire.usage_metadata.map(WireUsage::usage);
    let Read { text: content, calls, finish, .. } = read(wire)?;
    let finish = finish.ok_or_else(|| malformed("response (no candidate)"))?;
    let tool_calls: Vec<ToolCall> = calls
        .into_iter()
        .enumerate()
        .map(|(i, (id, name, arguments))| ToolCall { id: id.unwrap_or_else(|| format!("call_{i}")), name, arguments })
        .collect();
    let mut finish_reason = finish_reason(&finish);
    if !tool_calls.is_empty() && finish_reason == FinishReason::Stop {
        finish_reason = FinishReason::ToolCalls;
    }
    let usage = usage.unwrap_or_else(|| UsageEstimate::of(request).usage(&content));
    Ok(ChatResponse { content, tool_calls, finish_reason, usage })
}

/// Decodes Gemini's chunks; the body's end after a finish reason ends it.
struct Decoder {
    finish: Option<FinishReason>,
    calls: u32,
    usage: Option<Usage>,
    estimate: UsageEstimate,
}

impl Decoder {
    fn new(request: &ChatRequest) -> Self {
        Self { finish: None, calls: 0, usage: None, estimate: UsageEstimate::of(request) }
    }
}

impl StreamDecoder for Decoder {
    fn data(&mut self, payload: &str) -> Result<Vec<StreamEvent>, ProviderError> {
        let wire: WireResponse = serde_json::from_str(payload).map_err(|_| malformed("stream chunk"))?;
        if let Some(u) = wire.usage_metadata {
            self.usage = Some(u.usage());
        }
        let Read { text, thought, calls, finish } = read(wire)?;
        let mut out = Vec::new();
        if !thought.is_empty() {
            self.estimate.add_output(&thought);
            out.push(StreamEvent::Thinking(thought));
        }
        if !text.is_empty() {
            self.estimate.add_output(&text);
            out.push(StreamEvent::Delta(text));
        }
        for (id, name, arguments) in calls {
            // Gemini sends each call whole, in one chunk.
            let index = self.calls;
            self.calls += 1;
            self.estimate.add_output(&arguments);
            out.push(StreamEvent::ToolCallDelta {
                index,
                id: Some(id.unwrap_or_else(|| format!("call_{index}"))),
                name: Some(name),
                arguments,
            });
        }
        if let Some(f) = finish {
            self.finish = Some(finish_reason(&f));
        }
        Ok(out)
    }

    fn end(&mut self) -> Option<StreamEvent> {
        let mut finish_reason = self.finish?;
        if self.calls > 0 && finish_reason == FinishReason::Stop {
            finish_reason = FinishReason::ToolCalls;
        }
        Some(match self.usage {
            Some(usage) => StreamEvent::Done { finish_reason, usage, estimated: false },
            None => StreamEvent::Done { finish_reason, usage: self.estimate.produced(), estimated: true },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Tool};

    fn req() -> ChatRequest {
        let mut r = ChatRequest::new(
            "gemini-2.5-flash".into(),
            vec![Message::text(Role::System, "be brief"), Message::text(Role::User, "Hi")],
        );
        r.max_tokens = Some(64);
        r.stop = vec!["END".into()];
        r
    }

    #[test]
    fn request_translates_to_gemini_format() {
        let mut r = req();
        r.messages.push(Message {
            role: Role::Assistant,
            content: vec![],
            tool_calls: vec![ToolCall {
                id: "call_0".into(),
                name: "weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }],
            tool_call_id: None,
        });
        r.messages.push(Message { tool_call_id: Some("call_0".into()), ..Message::text(Role::Tool, "18C") });
        r.messages.push(Message {
            role: Role::User,
            content: vec![Part::Image { url: "https://example.com/a.PNG?x=1".into() }],
            tool_calls: vec![],
            tool_call_id: None,
        });
        r.tools = vec![Tool {
            name: "weather".into(),
            description: Some("Weather".into()),
            parameters: json!({ "type": "object" }),
        }];
        r.tool_choice = Some(ToolChoice::Tool("weather".into()));
        r.response_format = Some(ResponseFormat::JsonObject);
        let v = to_wire(&r);
        assert_eq!(v["systemInstruction"], json!({ "parts": [{ "text": "be brief" }] }));
        assert_eq!(v["contents"][0], json!({ "role": "user", "parts": [{ "text": "Hi" }] }));
        assert_eq!(
            v["contents"][1],
            json!({ "role": "model", "parts": [{ "functionCall": { "name": "weather", "args": { "city": "Paris" } } }] })
        );
        assert_eq!(
            v["contents"][2]["parts"][0],
            json!({ "functionResponse": { "name": "weather", "response": { "result": "18C" } } })
        );
        assert_eq!(
            v["contents"][2]["parts"][1],
            json!({ "fileData": { "mimeType": "image/png", "fileUri": "https://example.com/a.PNG?x=1" } })
        );
        assert_eq!(
            v["generationConfig"],
            json!({ "maxOutputTokens": 64, "stopSequences": ["END"], "responseMimeType": "application/json" })
        );
        assert_eq!(v["tools"][0]["functionDeclarations"][0]["name"], "weather");
        assert_eq!(
            v["toolConfig"]["functionCallingConfig"],
            json!({ "mode": "ANY", "allowedFunctionNames": ["weather"] })
        );
    }

    #[test]
    fn parses_real_response_bodies() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Hello there."}],"role":"model"},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"totalTokenCount":30,"thoughtsTokenCount":19,"promptTokensDetails":[{"modality":"TEXT","tokenCount":8}]},
            "modelVersion":"gemini-2.5-flash","responseId":"abc"}"#;
        let r = from_wire(&req(), body).unwrap();
        assert_eq!(r.content, "Hello there.");
        assert_eq!(r.usage, Usage { input_tokens: 8, output_tokens: 22 });
        let call = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}],"role":"model"},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":40,"candidatesTokenCount":6,"totalTokenCount":46}}"#;
        let r = from_wire(&req(), call).unwrap();
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                id: "call_0".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into()
            }]
        );
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}}"#;
        let e = from_wire(&req(), blocked).unwrap_err();
        assert_eq!((e.kind, e.upstream_code.as_deref()), (ProviderErrorKind::InvalidRequest, Some("content_filter")));
        let safety = br#"{"candidates":[{"finishReason":"SAFETY","index":0}]}"#;
        assert_eq!(from_wire(&req(), safety).unwrap().finish_reason, FinishReason::ContentFilter);
    }

    #[test]
    fn a_real_stream_decodes_and_ends_only_after_a_finish_reason() {
        let mut d = Decoder::new(&req());
        let a = d.data(r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8},"modelVersion":"gemini-2.5-flash"}"#).unwrap();
        assert_eq!(a, vec![StreamEvent::Delta("Hel".into())]);
        assert!(d.end().is_none(), "no finish reason yet: a cut stream");
        let mut d = Decoder::new(&req());
        d.data(r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}]}"#).unwrap();
        d.data(r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":2,"totalTokenCount":10}}"#).unwrap();
        assert_eq!(
            d.end(),
            Some(StreamEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: Usage { input_tokens: 8, output_tokens: 2 },
                estimated: false,
            })
        );
    }
}
