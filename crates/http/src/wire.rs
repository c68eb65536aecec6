//! OpenAI's chat-completions wire format, translated to and from the
//! canonical types. Unknown request fields are ignored (SDKs send new ones
//! before gateways know them); known fields are validated.

use modelroute_providers::{ChatRequest, Message, Role};
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
    ImageUrl {},
    InputAudio {},
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
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match p {
                            Part::Text { text: t } => text.push_str(&t),
                            Part::ImageUrl {} | Part::InputAudio {} => {
                                return Err(ApiError::invalid_param(
                                    format!("messages[{i}].content[{j}]"),
                                    "only text content is supported by the models of this catalogue",
                                ));
                            }
                        }
                    }
                    text
                }
            };
            messages.push(Message { role, content });
        }
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
