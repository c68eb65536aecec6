//! Anthropic's Messages wire format (`POST /v1/messages`), translated to and
//! from the canonical types, and Anthropic's error shape.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use modelroute_providers::{ChatRequest, ChatResponse, Message, Part, Role, Tool, ToolCall, ToolChoice};
use modelroute_types::Code;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::wire::{valid_image_url, valid_tool_name};
use crate::{ApiError, status_of};

#[derive(Debug, Deserialize)]
pub(crate) struct MessagesRequest {
    pub(crate) model: String,
    max_tokens: u32,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<Content>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    tools: Vec<InTool>,
    #[serde(default)]
    tool_choice: Option<InToolChoice>,
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
    #[serde(default, rename = "type")]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InToolChoice {
    Auto {},
    Any {},
    None {},
    Tool { name: String },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InRole {
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: InRole,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    Document {},
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<Content>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

/// The blocks of one Anthropic message as canonical messages: tool results
/// first (each its own `Tool` message), then the rest as one message.
fn messages_of(role: Role, content: Content, param: &str) -> Result<Vec<Message>, ApiError> {
    let blocks = match content {
        Content::Text(t) => return Ok(vec![Message::text(role, t)]),
        Content::Blocks(blocks) => blocks,
    };
    let mut out = Vec::new();
    let mut message = Message { role, content: Vec::new(), tool_calls: Vec::new(), tool_call_id: None };
    for (j, b) in blocks.into_iter().enumerate() {
        let at = || format!("{param}[{j}]");
        match b {
            Block::Text { text } => message.content.push(Part::Text { text }),
            Block::Image { source } if role == Role::User => {
                let url = match source {
                    ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
                    ImageSource::Url { url } => url,
                };
                if !valid_image_url(&url) {
                    return Err(ApiError::invalid_param(at(), "an image must be an http(s) URL or base64 data"));
                }
                message.content.push(Part::Image { url });
            }
            Block::ToolUse { id, name, input } if role == Role::Assistant => {
                message.tool_calls.push(ToolCall { id, name, arguments: input.to_string() });
            }
            Block::ToolResult { tool_use_id, content } if role == Role::User => {
                let text = match content {
                    None => String::new(),
                    Some(c) => messages_of(Role::Tool, c, &format!("{}.content", at()))?
                        .iter()
                        .map(Message::text_content)
                        .collect(),
                };
                out.push(Message { tool_call_id: Some(tool_use_id), ..Message::text(Role::Tool, text) });
            }
            Block::Image { .. } | Block::Document {} | Block::ToolUse { .. } | Block::ToolResult { .. } => {
                return Err(ApiError::invalid_param(
                    at(),
                    "this block is not supported here (text; images and tool results in user turns; tool_use in assistant turns)",
                ));
            }
        }
    }
    if !message.content.is_empty() || !message.tool_calls.is_empty() {
        out.push(message);
    }
    Ok(out)
}

impl MessagesRequest {
    /// Validates and translates; `model` stays the public slug.
    pub(crate) fn into_canonical(self) -> Result<ChatRequest, ApiError> {
        if self.max_tokens == 0 {
            return Err(ApiError::invalid_param("max_tokens", "max_tokens must be at least 1"));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param("messages", "messages must contain at least one message"));
        }
        if self.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(ApiError::invalid_param("temperature", "temperature must be between 0 and 1"));
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        if let Some(system) = self.system {
            let text: String = messages_of(Role::System, system, "system")?.iter().map(Message::text_content).collect();
            messages.push(Message::text(Role::System, text));
        }
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role {
                InRole::User => Role::User,
                InRole::Assistant => Role::Assistant,
            };
            messages.extend(messages_of(role, m.content, &format!("messages[{i}].content"))?);
        }
        let mut tools = Vec::with_capacity(self.tools.len());
        for (i, t) in self.tools.into_iter().enumerate() {
            if t.kind.as_deref().is_some_and(|k| k != "custom") {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].type"),
                    "only custom (client) tools are supported",
                ));
            }
            if !valid_tool_name(&t.name) {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].name"),
                    "a tool name is 1-64 characters of a-z, A-Z, 0-9, _ and -",
                ));
            }
            let Some(parameters) = t.input_schema.filter(Value::is_object) else {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].input_schema"),
                    "input_schema must be a JSON Schema object",
                ));
            };
            tools.push(Tool { name: t.name, description: t.description, parameters });
        }
        let tool_choice = match self.tool_choice {
            None => None,
            Some(InToolChoice::Auto {}) => Some(ToolChoice::Auto),
            Some(InToolChoice::None {}) => Some(ToolChoice::None),
            Some(InToolChoice::Any {}) => Some(ToolChoice::Required),
            Some(InToolChoice::Tool { name }) => {
                if !tools.iter().any(|t| t.name == name) {
                    return Err(ApiError::invalid_param("tool_choice.name", "tool_choice names a tool not in tools"));
                }
                Some(ToolChoice::Tool(name))
            }
        };
        if matches!(tool_choice, Some(ToolChoice::Required | ToolChoice::Tool(_))) && tools.is_empty() {
            return Err(ApiError::invalid_param("tool_choice", "tool_choice requires tools"));
        }
        Ok(ChatRequest {
            model: self.model,
            messages,
            max_tokens: Some(self.max_tokens),
            stop: self.stop_sequences,
            temperature: self.temperature,
            top_p: self.top_p,
            tools,
            tool_choice,
            response_format: None,
        })
    }
}

/// The content blocks of an answer, as Anthropic writes them.
pub(crate) fn content_blocks(r: &ChatResponse) -> Vec<Value> {
    let mut blocks = Vec::new();
    if !r.content.is_empty() || r.tool_calls.is_empty() {
        blocks.push(json!({ "type": "text", "text": r.content }));
    }
    blocks.extend(
        r.tool_calls
            .iter()
            .map(|c| json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments) })),
    );
    blocks
}

/// Tool arguments as the JSON object Anthropic's `input` is.
pub(crate) fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments).ok().filter(Value::is_object).unwrap_or_else(|| json!({}))
}

/// Anthropic's error `type` for a code.
pub(crate) fn error_type(code: Code) -> &'static str {
    match status_of(code).as_u16() {
        400 | 402 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An [`ApiError`] in Anthropic's shape: `{"type":"error","error":{"type","message"}}`.
#[derive(Debug)]
pub(crate) struct AnthropicError(pub(crate) ApiError);

impl std::fmt::Display for AnthropicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: Into<ApiError>> From<E> for AnthropicError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl AnthropicError {
    /// The error body in Anthropic's shape (answers and stream error events alike).
    pub(crate) fn body(&self) -> Value {
        json!({ "type": "error", "error": { "type": error_type(self.0.code()), "message": self.0.message() } })
    }
}

impl ResponseError for AnthropicError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.0.error_response();
        let bytes = actix_web::body::BoxBody::new(self.body().to_string());
        response.headers_mut().insert(
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderValue::from_static("application/json"),
        );
        response.set_body(bytes)
    }
}
