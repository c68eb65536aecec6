//! OpenAI's chat-completions wire format, translated to and from the
//! canonical types. Unknown request fields are ignored (SDKs send new ones
//! before gateways know them); known fields are validated.

use modelroute_providers::{
    ChatRequest, ChatResponse, Message, Part as CanonicalPart, ResponseFormat, Role, Tool, ToolCall, ToolChoice,
};
use modelroute_types::Money;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;

#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletionRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<InMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    tools: Option<Vec<InTool>>,
    #[serde(default)]
    tool_choice: Option<InToolChoice>,
    #[serde(default)]
    response_format: Option<InResponseFormat>,
    /// ModelRoute's own: routing policy and price ceilings for this request.
    #[serde(default)]
    pub(crate) routing: Option<modelroute_executions::RequestPreferences>,
    /// Models to fall back to, in order, when `model` cannot serve
    /// (OpenRouter's `models`; a leading repeat of `model` is ignored).
    #[serde(default)]
    pub(crate) models: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct InTool {
    #[serde(rename = "type")]
    kind: String,
    function: InFunction,
}

#[derive(Debug, Deserialize)]
struct InFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InToolChoice {
    Mode(String),
    Named { function: InNamed },
}

#[derive(Debug, Deserialize)]
struct InNamed {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: InJsonSchema },
}

#[derive(Debug, Deserialize)]
struct InJsonSchema {
    name: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct InToolCall {
    id: String,
    function: InCall,
}

#[derive(Debug, Deserialize)]
struct InCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InMessage {
    role: InRole,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Vec<InToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: InImage },
    InputAudio {},
    File {},
}

#[derive(Debug, Deserialize)]
struct InImage {
    url: String,
}

/// A tool name as every provider accepts it: `[a-zA-Z0-9_-]{1,64}`.
pub(crate) fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// An image URL a provider can fetch or read: `https:`/`http:` or a base64
/// `data:image/…` URL — or an uploaded file's id (`file_…`), which the
/// platform turns into a `data:` URL before the provider sees it.
pub(crate) fn valid_image_url(url: &str) -> bool {
    url.starts_with("https://")
        || url.starts_with("http://")
        || (url.starts_with("data:image/") && url.contains(";base64,"))
        || url.parse::<modelroute_types::FileId>().is_ok()
}

impl ChatCompletionRequest {
    /// Validates and translates; `model` stays the public slug.
    pub(crate) fn into_canonical(self) -> Result<ChatRequest, ApiError> {
        if self.model.trim().is_empty() {
            return Err(ApiError::invalid_param("model", "model must not be empty"));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param("messages", "messages must contain at least one message"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::invalid_param("temperature", "temperature must be between 0 and 2"));
        }
        if self.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(ApiError::invalid_param("top_p", "top_p must be between 0 and 1"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return Err(ApiError::invalid_param("max_tokens", "max_tokens must be at least 1"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role {
                InRole::System | InRole::Developer => Role::System,
                InRole::User => Role::User,
                InRole::Assistant => Role::Assistant,
                InRole::Tool => Role::Tool,
            };
            let content = match m.content {
                None => Vec::new(),
                Some(Content::Text(t)) => vec![CanonicalPart::Text { text: t }],
                Some(Content::Parts(parts)) => {
                    let mut out = Vec::with_capacity(parts.len());
                    for (j, p) in parts.into_iter().enumerate() {
                        match p {
                            Part::Text { text } => out.push(CanonicalPart::Text { text }),
                            Part::ImageUrl { image_url } if role == Role::User => {
                                if !valid_image_url(&image_url.url) {
                                    return Err(ApiError::invalid_param(
                                        format!("messages[{i}].content[{j}].image_url.url"),
                                        "an image must be an http(s) URL, a base64 data:image/… URL or an uploaded file's id (file_…)",
                                    ));
                                }
                                out.push(CanonicalPart::Image { url: image_url.url });
                            }
                            Part::ImageUrl { .. } | Part::InputAudio {} | Part::File {} => {
                                return Err(ApiError::invalid_param(
                                    format!("messages[{i}].content[{j}]"),
                                    "only text, and images in user messages, are supported",
                                ));
                            }
                        }
                    }
                    out
                }
            };
            if !m.tool_calls.is_empty() && role != Role::Assistant {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].tool_calls"),
                    "only assistant messages carry tool_calls",
                ));
            }
            let tool_calls = m
                .tool_calls
                .into_iter()
                .map(|c| ToolCall { id: c.id, name: c.function.name, arguments: c.function.arguments })
                .collect();
            if role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].tool_call_id"),
                    "a tool message must name the tool call it answers",
                ));
            }
            messages.push(Message { role, content, tool_calls, tool_call_id: m.tool_call_id });
        }
        let tools = self.tools.unwrap_or_default();
        let mut canonical_tools = Vec::with_capacity(tools.len());
        for (i, t) in tools.into_iter().enumerate() {
            if t.kind != "function" {
                return Err(ApiError::invalid_param(format!("tools[{i}].type"), "only function tools are supported"));
            }
            if !valid_tool_name(&t.function.name) {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].function.name"),
                    "a tool name is 1-64 characters of a-z, A-Z, 0-9, _ and -",
                ));
            }
            let parameters = t.function.parameters.unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            if !parameters.is_object() {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].function.parameters"),
                    "parameters must be a JSON Schema object",
                ));
            }
            canonical_tools.push(Tool { name: t.function.name, description: t.function.description, parameters });
        }
        let tool_choice = match self.tool_choice {
            None => None,
            Some(InToolChoice::Mode(m)) => Some(match m.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                _ => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        "tool_choice must be auto, none, required or a named function",
                    ));
                }
            }),
            Some(InToolChoice::Named { function }) => {
                if !canonical_tools.iter().any(|t| t.name == function.name) {
                    return Err(ApiError::invalid_param("tool_choice", "tool_choice names a function not in tools"));
                }
                Some(ToolChoice::Tool(function.name))
            }
        };
        if matches!(tool_choice, Some(ToolChoice::Required | ToolChoice::Tool(_))) && canonical_tools.is_empty() {
            return Err(ApiError::invalid_param("tool_choice", "tool_choice requires tools"));
        }
        let response_format = match self.response_format {
            None | Some(InResponseFormat::Text) => None,
            Some(InResponseFormat::JsonObject) => Some(ResponseFormat::JsonObject),
            Some(InResponseFormat::JsonSchema { json_schema }) => {
                if !valid_tool_name(&json_schema.name) {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema.name",
                        "the name is 1-64 characters of a-z, A-Z, 0-9, _ and -",
                    ));
                }
                let schema = json_schema.schema.unwrap_or_else(|| json!({ "type": "object" }));
                if !schema.is_object() {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        "schema must be a JSON Schema object",
                    ));
                }
                Some(ResponseFormat::JsonSchema {
                    name: json_schema.name,
                    schema,
                    strict: json_schema.strict.unwrap_or(false),
                })
            }
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) if v.len() <= 4 => v,
            Some(Stop::Many(_)) => return Err(ApiError::invalid_param("stop", "at most 4 stop sequences")),
        };
        Ok(ChatRequest {
            model: self.model,
            messages,
            max_tokens,
            stop,
            temperature: self.temperature,
            top_p: self.top_p,
            tools: canonical_tools,
            tool_choice,
            response_format,
        })
    }
}

/// Money as clients read it: exact nano-dollars plus a decimal string.
pub(crate) fn money(m: Money) -> Value {
    json!({ "nano_usd": m.units(), "usd": m.to_usd_string() })
}

pub(crate) fn usage(input: u64, output: u64) -> Value {
    json!({ "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output })
}

/// The assistant message of a completion, as OpenAI writes it.
pub(crate) fn assistant_message(r: &ChatResponse) -> Value {
    let content = if r.content.is_empty() && !r.tool_calls.is_empty() { Value::Null } else { json!(r.content) };
    let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
    if !r.tool_calls.is_empty()
        && let Some(obj) = message.as_object_mut()
    {
        let calls: Vec<Value> = r
            .tool_calls
            .iter()
            .map(
                |c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }),
            )
            .collect();
        obj.insert("tool_calls".into(), json!(calls));
    }
    message
}
