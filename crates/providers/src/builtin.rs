//! The built-in provider: deterministic, in-process, no keys. It serves the
//! embedded default, the tests and the benchmarks.
//!
//! Its answer is derived from the input: `Echo: ` followed by the last user
//! message. Tokens are counted as `ceil(chars / 4)` per message plus 4 per
//! message of framing (OpenAI's rule of thumb), output as `ceil(chars / 4)`.
//! Configuration can add latency or make it fail, before answering or in
//! the middle of a stream.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Provider, ProviderError, ProviderErrorKind, Role, StreamEvent,
    Usage,
};

/// Tokens of framing per message.
const PER_MESSAGE_TOKENS: u64 = 4;

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
    u64::try_from(text.chars().count()).unwrap_or(u64::MAX).div_ceil(4)
}

impl BuiltinProvider {
    /// A provider with these settings.
    #[must_use]
    pub const fn new(config: BuiltinConfig) -> Self {
        Self { config }
    }

    /// The deterministic answer and its finish reason.
    fn answer(request: &ChatRequest) -> (String, FinishReason) {
        let last_user = request.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.trim());
        let mut text = match last_user {
            Some(t) if !t.is_empty() => format!("Echo: {t}"),
            _ => "Hello from the built-in model.".to_owned(),
        };
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
        (text, reason)
    }

    fn usage(request: &ChatRequest, output: &str) -> Usage {
        let input = request.messages.iter().map(|m| count_tokens(&m.content) + PER_MESSAGE_TOKENS).sum();
        Usage { input_tokens: input, output_tokens: count_tokens(output) }
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
        let (content, finish_reason) = Self::answer(request);
        let usage = Self::usage(request, &content);
        Ok(ChatResponse { content, finish_reason, usage })
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        Self::delay(self.config.latency_ms).await;
        if self.config.failure == BuiltinFailure::BeforeResponse {
            return Err(Self::injected());
        }
        let (content, finish_reason) = Self::answer(request);
        let usage = Self::usage(request, &content);
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
        match self.config.failure {
            BuiltinFailure::MidStream => events.truncate(1),
            _ => events.push(Ok(StreamEvent::Done { finish_reason, usage })),
        }
        let chunk_delay = self.config.chunk_delay_ms;
        let stream = futures_util::stream::iter(events).then(move |e| async move {
            Self::delay(chunk_delay).await;
            e
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn req(text: &str, max_tokens: Option<u32>) -> ChatRequest {
        ChatRequest {
            model: "echo".into(),
            messages: vec![
                Message { role: Role::System, content: "be brief".into() },
                Message { role: Role::User, content: text.into() },
            ],
            max_tokens,
            stop: vec![],
            temperature: None,
            top_p: None,
        }
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
                StreamEvent::Done { usage, finish_reason } => done = Some((usage, finish_reason)),
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
    async fn injected_failures() {
        let p = BuiltinProvider::new(BuiltinConfig { failure: BuiltinFailure::BeforeResponse, ..Default::default() });
        assert!(p.chat(&req("x", None)).await.is_err());
        let p = BuiltinProvider::new(BuiltinConfig { failure: BuiltinFailure::MidStream, ..Default::default() });
        let events: Vec<_> = p.chat_stream(&req("one two three", None)).await.unwrap().collect().await;
        assert_eq!(events.len(), 1, "cut after the first delta, no Done");
    }
}
