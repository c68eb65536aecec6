//! The built-in provider: deterministic, in-process, no keys. It serves the
//! embedded default, the tests and the benchmarks.
//!
//! Its answer is derived from the input: `Echo: ` followed by the text of the
//! last user (or tool) message. With JSON mode on, the answer is
//! `{"echo": "<that text>"}`. With tools, it calls one — the named tool when
//! `tool_choice` names one, the first when a call is required, and under
//! `auto` the first tool whose name the last user message mentions — with
//! `{"input": "<that text>"}` as arguments. Tokens are counted as
//! `ceil(chars / 4)` per message plus 4 per message of framing (OpenAI's rule
//! of thumb), output as `ceil(chars / 4)`.
//! Configuration can add latency or make it fail, before answering or in
//! the middle of a stream.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Provider, ProviderError, ProviderErrorKind, Role, StreamEvent,
    ToolCall, ToolChoice, UsageEstimate,
};

/// How the built-in provider fails, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinFailure {
    /// It always answers.
    #[default]
    None,
    /// It fails every call with an upstream error before any output.
    BeforeResponse,
    /// Streams stop after the first delta without an end marker.
    MidStream,
}

/// `kind = "builtin"` provider settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinConfig {
    /// Delay before the answer (or the first streamed token).
    pub latency_ms: u64,
    /// Delay between streamed deltas.
    pub chunk_delay_ms: u64,
    /// Failure injection.
    pub failure: BuiltinFailure,
    /// Bulkhead: calls in flight at once (0 = unbounded).
    pub max_concurrency: usize,
}

/// The built-in provider.
#[derive(Clone, Debug, Default)]
pub struct BuiltinProvider {
    config: BuiltinConfig,
}

/// The built-in tokenizer: `ceil(chars / 4)`.
#[must_use]
pub fn count_tokens(text: &str) -> u64 {
    tokens_of_chars(char_count(text))
}

/// The characters of `text`, as the token estimate counts them.
pub(crate) fn char_count(text: &str) -> u64 {
    u64::try_from(text.chars().count()).unwrap_or(u64::MAX)
}

/// The token estimate of `chars` characters: four to a token, rounded up.
pub(crate) const fn tokens_of_chars(chars: u64) -> u64 {
    chars.div_ceil(4)
}

impl BuiltinProvider {
    /// A provider with these settings.
    #[must_use]
    pub const fn new(config: BuiltinConfig) -> Self {
        Self { config }
    }

    /// The deterministic answer: text, tool calls and finish reason.
    fn answer(request: &ChatRequest) -> (String, Vec<ToolCall>, FinishReason) {
        let last = request.messages.iter().rev().find(|m| matches!(m.role, Role::User | Role::Tool));
        let input = last.map(|m| m.text_content().trim().to_owned()).unwrap_or_default();
        if let Some(call) = Self::tool_call(request, last.is_some_and(|m| m.role == Role::User), &input) {
            return (String::new(), vec![call], FinishReason::ToolCalls);
        }
        let mut text =
            if input.is_empty() { "Hello from the built-in model.".to_owned() } else { format!("Echo: {input}") };
        if request.response_format.is_some() {
            return (serde_json::json!({ "echo": input }).to_string(), Vec::new(), FinishReason::Stop);
        }
        let mut reason = FinishReason::Stop;
        if let Some(stop) = request.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(stop);
        }
        if let Some(max) = request.max_tokens {
            let max_chars = usize::try_from(u64::from(max) * 4).unwrap_or(usize::MAX);
            if let Some((cut, _)) = text.char_indices().nth(max_chars) {
                text.truncate(cut);
                reason = FinishReason::Length;
            }
        }
        (text, Vec::new(), reason)
    }

    /// The tool call the rules of the module documentation ask for, if any.
    fn tool_call(request: &ChatRequest, user_spoke_last: bool, input: &str) -> Option<ToolCall> {
        let tool = match request.tool_choice.as_ref().unwrap_or(&ToolChoice::Auto) {
            ToolChoice::Tool(name) => request.tools.iter().find(|t| &t.name == name),
            ToolChoice::Required => request.tools.first(),
            ToolChoice::Auto if user_spoke_last => request.tools.iter().find(|t| input.contains(t.name.as_str())),
            ToolChoice::Auto | ToolChoice::None => None,
        }?;
        // A stable id: FNV-1a of the conversation's length and the input.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in request.messages.len().to_le_bytes().iter().chain(input.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Some(ToolCall {
            id: format!("call_{:012x}", h >> 16),
            name: tool.name.clone(),
            arguments: serde_json::json!({ "input": input }).to_string(),
        })
    }

    async fn delay(ms: u64) {
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn injected() -> ProviderError {
        ProviderError::new(ProviderErrorKind::Unavailable, "the upstream provider failed (injected failure)")
    }
}

impl Provider for BuiltinProvider {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        Self::delay(self.config.latency_ms).await;
        if self.config.failure == BuiltinFailure::BeforeResponse {
            return Err(Self::injected());
        }
        let (content, tool_calls, finish_reason) = Self::answer(request);
        let usage = UsageEstimate::of(request).usage(&format!("{content}{}", arguments_of(&tool_calls)));
        Ok(ChatResponse { content, tool_calls, finish_reason, usage })
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        Self::delay(self.config.latency_ms).await;
        if self.config.failure == BuiltinFailure::BeforeResponse {
            return Err(Self::injected());
        }
        let (content, tool_calls, finish_reason) = Self::answer(request);
        let usage = UsageEstimate::of(request).usage(&format!("{content}{}", arguments_of(&tool_calls)));
        // One delta per word, keeping the spaces, so the deltas concatenate
        // to exactly the non-streamed answer.
        let mut deltas: Vec<String> = Vec::new();
        let mut current = String::new();
        for ch in content.chars() {
            current.push(ch);
            if ch == ' ' {
                deltas.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            deltas.push(current);
        }
        let mut events: Vec<Result<StreamEvent, ProviderError>> =
            deltas.into_iter().map(|d| Ok(StreamEvent::Delta(d))).collect();
        for (i, c) in tool_calls.into_iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            events.push(Ok(StreamEvent::ToolCallDelta {
                index,
                id: Some(c.id),
                name: Some(c.name),
                arguments: String::new(),
            }));
            events.push(Ok(StreamEvent::ToolCallDelta { index, id: None, name: None, arguments: c.arguments }));
        }
        match self.config.failure {
            BuiltinFailure::MidStream => events.truncate(1),
            // The built-in model's counts are its own, never an estimate.
            _ => events.push(Ok(StreamEvent::Done { finish_reason, usage, estimated: false })),
        }
        let chunk_delay = self.config.chunk_delay_ms;
        let stream = futures_util::stream::iter(events).then(move |e| async move {
            Self::delay(chunk_delay).await;
            e
        });
        Ok(Box::pin(stream))
    }
}

fn arguments_of(calls: &[ToolCall]) -> String {
    calls.iter().map(|c| c.arguments.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Usage};

    fn req(text: &str, max_tokens: Option<u32>) -> ChatRequest {
        let mut r = ChatRequest::new(
            "echo".into(),
            vec![Message::text(Role::System, "be brief"), Message::text(Role::User, text)],
        );
        r.max_tokens = max_tokens;
        r
    }

    #[test]
    fn output_counted_in_pieces_is_the_whole_outputs_count() {
        let estimate = UsageEstimate::of(&req("hi", None));
        let whole = "Grüße, wörld ✓ — über 9000 ";
        for cut in 1..whole.chars().count() {
            let at = whole.char_indices().nth(cut).map_or(whole.len(), |(i, _)| i);
            let mut pieces = estimate.clone();
            pieces.add_output(whole.get(..at).unwrap());
            pieces.add_output(whole.get(at..).unwrap());
            assert_eq!(pieces.produced(), estimate.usage(whole), "cut at {cut}");
        }
        assert_eq!(estimate.usage(whole).output_tokens, 7, "27 characters, four to a token");
    }

    #[tokio::test]
    async fn deterministic_and_streams_the_same_text() {
        let p = BuiltinProvider::default();
        let a = p.chat(&req("hello there world", None)).await.unwrap();
        let b = p.chat(&req("hello there world", None)).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.content, "Echo: hello there world");
        assert_eq!(a.usage, Usage { input_tokens: 2 + 4 + 5 + 4, output_tokens: 6 });
        let mut s = p.chat_stream(&req("hello there world", None)).await.unwrap();
        let mut text = String::new();
        let mut done = None;
        while let Some(e) = s.next().await {
            match e.unwrap() {
                StreamEvent::Delta(d) => text.push_str(&d),
                StreamEvent::Done { usage, finish_reason, estimated } => {
                    assert!(!estimated);
                    done = Some((usage, finish_reason));
                }
                StreamEvent::ToolCallDelta { .. } | StreamEvent::Thinking(_) | StreamEvent::Malformed => {
                    panic!("no tools were offered, no thinking, nothing malformed")
                }
            }
        }
        assert_eq!(text, a.content);
        assert_eq!(done, Some((a.usage, FinishReason::Stop)));
    }

    #[tokio::test]
    async fn max_tokens_truncates_with_length() {
        let r = BuiltinProvider::default().chat(&req("a long message indeed", Some(2))).await.unwrap();
        assert_eq!(r.content, "Echo: a ");
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert_eq!(r.usage.output_tokens, 2);
    }

    #[tokio::test]
    async fn tools_and_json_mode_are_deterministic() {
        let mut r = req("what is the weather in Paris?", None);
        r.tools = vec![crate::Tool { name: "weather".into(), description: None, parameters: serde_json::json!({}) }];
        let a = BuiltinProvider::default().chat(&r).await.unwrap();
        assert_eq!(a.finish_reason, FinishReason::ToolCalls);
        assert_eq!(a.tool_calls[0].name, "weather");
        assert_eq!(a.tool_calls[0].arguments, r#"{"input":"what is the weather in Paris?"}"#);
        r.tool_choice = Some(ToolChoice::None);
        assert!(BuiltinProvider::default().chat(&r).await.unwrap().tool_calls.is_empty());
        let mut j = req("hi", None);
        j.response_format = Some(crate::ResponseFormat::JsonObject);
        assert_eq!(BuiltinProvider::default().chat(&j).await.unwrap().content, r#"{"echo":"hi"}"#);
    }

    #[tokio::test]
    async fn injected_failures() {
        let p = BuiltinProvider::new(BuiltinConfig { failure: BuiltinFailure::BeforeResponse, ..Default::default() });
        assert!(p.chat(&req("x", None)).await.is_err());
        let p = BuiltinProvider::new(BuiltinConfig { failure: BuiltinFailure::MidStream, ..Default::default() });
        let events: Vec<_> = p.chat_stream(&req("one two three", None)).await.unwrap().collect().await;
        assert_eq!(events.len(), 1, "cut after the first delta, no Done");
    }
}
