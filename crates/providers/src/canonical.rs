//! The platform's own request and response shapes. Ingress formats (OpenAI,
//! Anthropic) translate into these; adapters translate out of them. They
//! cover what the three wire formats share: text and image parts, system
//! prompts, tool definitions and calls, JSON mode, stop sequences, usage and
//! finish reasons.

use std::pin::Pin;

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ProviderError;

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions.
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// One piece of a message's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, by `https:` URL or as a `data:<media type>;base64,…` URL.
    Image {
        /// Where it is, or the image itself.
        url: String,
    },
}

/// A call the model made to one of the request's tools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, quoted back by the tool's result.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: a JSON object as text, as the model wrote it.
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The author.
    pub role: Role,
    /// Its content (possibly empty for an assistant message that only calls tools).
    pub content: Vec<Part>,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `Tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message of plain text.
    #[must_use]
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self { role, content: vec![Part::Text { text: text.into() }], tool_calls: Vec::new(), tool_call_id: None }
    }

    /// Its text parts, concatenated.
    #[must_use]
    pub fn text_content(&self) -> String {
        let mut out = String::new();
        for p in &self.content {
            if let Part::Text { text } = p {
                out.push_str(text);
            }
        }
        out
    }

    /// How many images it carries.
    #[must_use]
    pub fn image_count(&self) -> usize {
        self.content.iter().filter(|p| matches!(p, Part::Image { .. })).count()
    }
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// Its name (`[a-zA-Z0-9_-]{1,64}`).
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments as a JSON Schema object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This tool.
    Tool(String),
}

/// The shape the answer must have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON that matches a schema.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The JSON Schema.
        schema: Value,
        /// Whether the provider must enforce it exactly.
        strict: bool,
    },
}

/// A chat request as the platform sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The provider's model name (the route's upstream model).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Upper bound of generated tokens.
    pub max_tokens: Option<u32>,
    /// Sequences that end generation.
    pub stop: Vec<String>,
    /// Sampling temperature (not money: a float is fine here).
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Tools the model may call.
    pub tools: Vec<Tool>,
    /// Whether it must call one.
    pub tool_choice: Option<ToolChoice>,
    /// JSON mode or structured output.
    pub response_format: Option<ResponseFormat>,
}

impl ChatRequest {
    /// A request with only messages set; the rest is default.
    #[must_use]
    pub const fn new(model: String, messages: Vec<Message>) -> Self {
        Self {
            model,
            messages,
            max_tokens: None,
            stop: Vec::new(),
            temperature: None,
            top_p: None,
            tools: Vec::new(),
            tool_choice: None,
            response_format: None,
        }
    }

    /// Every piece of prompt text, for token estimates: message text, tool
    /// calls and results, tool definitions and the response schema.
    #[must_use]
    pub fn prompt_texts(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.messages.len() + self.tools.len());
        for m in &self.messages {
            let mut text = m.text_content();
            for c in &m.tool_calls {
                text.push_str(&c.name);
                text.push_str(&c.arguments);
            }
            out.push(text);
        }
        for t in &self.tools {
            out.push(format!("{}{}{}", t.name, t.description.as_deref().unwrap_or(""), t.parameters));
        }
        if let Some(ResponseFormat::JsonSchema { schema, .. }) = &self.response_format {
            out.push(schema.to_string());
        }
        out
    }

    /// Images across the conversation.
    #[must_use]
    pub fn image_count(&self) -> usize {
        self.messages.iter().map(Message::image_count).sum()
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model called tools and waits for their results.
    ToolCalls,
    /// A content filter stopped it.
    ContentFilter,
}

impl FinishReason {
    /// The OpenAI name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }
}

/// Token counts as the provider reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// A complete answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The generated text.
    pub content: String,
    /// Tool calls the model made.
    pub tool_calls: Vec<ToolCall>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
}

/// One event of a streamed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// More text.
    Delta(String),
    /// Part of a tool call: the first delta of call `index` carries its id
    /// and name; the arguments arrive in pieces to be concatenated.
    ToolCallDelta {
        /// Which call (0-based, in order of appearance).
        index: u32,
        /// The call's id (first delta only).
        id: Option<String>,
        /// The tool's name (first delta only).
        name: Option<String>,
        /// More argument text.
        arguments: String,
    },
    /// Reasoning ("thinking") the model streams before or between its
    /// output: a sign of progress, billed as output, not part of the answer.
    Thinking(String),
    /// A chunk that could not be read was skipped (the stream goes on; past
    /// the provider's `max_malformed_chunks` the stream fails instead).
    Malformed,
    /// The end, with the provider's usage. Only this marks success.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
        /// The provider reported no usage: `usage` is the built-in
        /// tokenizer's estimate ([`UsageEstimate`]).
        estimated: bool,
    },
}

/// A streamed answer.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// Usage by the built-in tokenizer, for providers that do not report it
/// (and streams that end before they do): `ceil(chars / 4)` per message
/// plus 4 of framing, a flat 765 tokens per image (OpenAI's price of a
/// 1024×1024 image in high detail), output counted as it arrives.
#[derive(Clone, Debug, Default)]
pub struct UsageEstimate {
    input_tokens: u64,
    /// Characters of output counted so far (the estimate counts characters:
    /// [`crate::count_tokens`]), so a long stream keeps no copy of its text.
    output_chars: u64,
}

/// Tokens counted for one image when a provider reports no usage.
pub const IMAGE_TOKENS: u64 = 765;

impl UsageEstimate {
    /// The estimate for `request`'s prompt.
    #[must_use]
    pub fn of(request: &ChatRequest) -> Self {
        let text: u64 = request.prompt_texts().iter().map(|t| crate::count_tokens(t) + 4).sum();
        let images = u64::try_from(request.image_count()).unwrap_or(u64::MAX).saturating_mul(IMAGE_TOKENS);
        Self { input_tokens: text.saturating_add(images), output_chars: 0 }
    }

    /// Counts more output.
    pub fn add_output(&mut self, text: &str) {
        self.output_chars = self.output_chars.saturating_add(crate::builtin::char_count(text));
    }

    /// The usage of the output counted so far.
    #[must_use]
    pub fn produced(&self) -> Usage {
        Usage { input_tokens: self.input_tokens, output_tokens: crate::builtin::tokens_of_chars(self.output_chars) }
    }

    /// The usage of a complete `output`.
    #[must_use]
    pub fn usage(&self, output: &str) -> Usage {
        Usage { input_tokens: self.input_tokens, output_tokens: crate::count_tokens(output) }
    }
}
