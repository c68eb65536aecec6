//! Anthropic's Messages wire format (`POST /v1/messages`), translated to and
//! from the canonical types, and Anthropic's error shape.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use modelroute_providers::{ChatRequest, FinishReason, Message, Role};
use modelroute_types::Code;
use serde::Deserialize;
use serde_json::json;

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
    Text { text: String },
    Image {},
    Document {},
    ToolUse {},
    ToolResult {},
}

fn text_of(content: Content, param: &str) -> Result<String, ApiError> {
    match content {
        Content::Text(t) => Ok(t),
        Content::Blocks(blocks) => {
            let mut text = String::new();
            for (j, b) in blocks.into_iter().enumerate() {
                match b {
                    Block::Text { text: t } => text.push_str(&t),
                    Block::Image {} | Block::Document {} | Block::ToolUse {} | Block::ToolResult {} => {
                        return Err(ApiError::invalid_param(
                            format!("{param}[{j}]"),
                            "only text content is supported by the models of this catalogue",
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
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
            messages.push(Message { role: Role::System, content: text_of(system, "system")? });
        }
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role {
                InRole::User => Role::User,
                InRole::Assistant => Role::Assistant,
            };
            messages.push(Message { role, content: text_of(m.content, &format!("messages[{i}].content"))? });
        }
        Ok(ChatRequest {
            model: self.model,
            messages,
            max_tokens: Some(self.max_tokens),
            stop: self.stop_sequences,
            temperature: self.temperature,
            top_p: self.top_p,
        })
    }
}

/// Anthropic's `stop_reason` for a finish reason.
pub(crate) const fn stop_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "max_tokens",
        FinishReason::Stop | FinishReason::ContentFilter => "end_turn",
    }
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

impl ResponseError for AnthropicError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.0.error_response();
        let body =
            json!({ "type": "error", "error": { "type": error_type(self.0.code()), "message": self.0.message() } });
        let bytes = actix_web::body::BoxBody::new(body.to_string());
        response.headers_mut().insert(
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderValue::from_static("application/json"),
        );
        response.set_body(bytes)
    }
}
