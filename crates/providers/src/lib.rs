//! Provider adapters: one [`Provider`] trait, one module per provider, and a
//! closed enum ([`ProviderClient`]) for dispatch that doubles as the tagged
//! configuration format. The canonical request and response types in
//! [`canonical`] are what the rest of the platform speaks; each adapter
//! translates them to and from its provider's wire format.
//!
//! This crate knows no database and no server.

pub mod anthropic;
mod builtin;
pub mod canonical;
mod config;
mod error;
pub mod gemini;
pub mod openai;
pub mod replicate;
mod transport;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use anthropic::AnthropicProvider;
pub use builtin::{BuiltinConfig, BuiltinFailure, BuiltinProvider, count_tokens};
pub use canonical::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, IMAGE_TOKENS, Message, Part, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice, Usage, UsageEstimate,
};
pub use config::{ProviderConfig, ProvidersConfig, default_providers};
pub use error::{ProviderError, ProviderErrorKind};
pub use gemini::GeminiProvider;
pub use openai::OpenAiProvider;
pub use replicate::{
    CallbackRefused, Prediction, PredictionOutput, PredictionStatus, ReplicateConfig, ReplicateProvider,
};
pub use transport::{HttpConfig, SseParser, error_from_status};

/// What every adapter does.
pub trait Provider: Send + Sync {
    /// One complete answer.
    fn chat(&self, request: &ChatRequest) -> impl Future<Output = Result<ChatResponse, ProviderError>> + Send;

    /// A stream of deltas ending with [`StreamEvent::Done`]. A stream that
    /// ends without `Done` was cut off and is not a success.
    fn chat_stream(&self, request: &ChatRequest) -> impl Future<Output = Result<ChatStream, ProviderError>> + Send;
}

/// One configured provider. A closed enum: adding a provider adds a variant.
#[derive(Debug, Clone)]
pub enum ProviderClient {
    /// The built-in deterministic provider.
    Builtin(BuiltinProvider),
    /// An OpenAI-compatible chat-completions API.
    OpenAiCompatible(Box<OpenAiProvider>),
    /// Anthropic Messages.
    Anthropic(Box<AnthropicProvider>),
    /// Google Gemini.
    Gemini(Box<GeminiProvider>),
    /// Replicate-style asynchronous predictions: no answer within a request.
    Replicate(Box<ReplicateProvider>),
}

/// What a synchronous call to an asynchronous provider answers.
fn asynchronous_only() -> ProviderError {
    ProviderError::new(
        ProviderErrorKind::InvalidRequest,
        "this model runs asynchronously: submit it with POST /v1/executions",
    )
}

impl Provider for ProviderClient {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        match self {
            Self::Builtin(p) => p.chat(request).await,
            Self::OpenAiCompatible(p) => p.chat(request).await,
            Self::Anthropic(p) => p.chat(request).await,
            Self::Gemini(p) => p.chat(request).await,
            Self::Replicate(_) => Err(asynchronous_only()),
        }
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        match self {
            Self::Builtin(p) => p.chat_stream(request).await,
            Self::OpenAiCompatible(p) => p.chat_stream(request).await,
            Self::Anthropic(p) => p.chat_stream(request).await,
            Self::Gemini(p) => p.chat_stream(request).await,
            Self::Replicate(_) => Err(asynchronous_only()),
        }
    }
}

/// The configured providers by name, each behind its bulkhead.
#[derive(Debug, Clone, Default)]
pub struct ProviderRegistry {
    providers: BTreeMap<String, (Arc<ProviderClient>, Option<Arc<Semaphore>>)>,
}

/// A place in a provider's bulkhead; the call holds it until dropped.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl ProviderRegistry {
    /// Builds every configured provider.
    ///
    /// # Errors
    /// A provider whose settings are invalid, named in the message.
    pub fn from_config(config: &ProvidersConfig) -> Result<Self, String> {
        let mut providers = BTreeMap::new();
        for (name, c) in config {
            let limit = match c {
                ProviderConfig::Builtin(b) => b.max_concurrency,
                ProviderConfig::OpenaiCompatible(h) | ProviderConfig::Anthropic(h) | ProviderConfig::Gemini(h) => {
                    h.max_concurrency
                }
                ProviderConfig::Replicate(r) => r.max_concurrency,
            };
            let bulkhead = (limit > 0).then(|| Arc::new(Semaphore::new(limit)));
            let named = |e: String| format!("providers.{name}: {e}");
            let client = match c {
                ProviderConfig::Builtin(b) => ProviderClient::Builtin(BuiltinProvider::new(b.clone())),
                ProviderConfig::OpenaiCompatible(h) => {
                    ProviderClient::OpenAiCompatible(Box::new(OpenAiProvider::new(h.clone()).map_err(named)?))
                }
                ProviderConfig::Anthropic(h) => {
                    ProviderClient::Anthropic(Box::new(AnthropicProvider::new(h.clone()).map_err(named)?))
                }
                ProviderConfig::Gemini(h) => {
                    ProviderClient::Gemini(Box::new(GeminiProvider::new(h.clone()).map_err(named)?))
                }
                ProviderConfig::Replicate(r) => {
                    ProviderClient::Replicate(Box::new(ReplicateProvider::new(r.clone()).map_err(named)?))
                }
            };
            providers.insert(name.clone(), (Arc::new(client), bulkhead));
        }
        Ok(Self { providers })
    }

    /// The provider named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Arc<ProviderClient>> {
        self.providers.get(name).map(|(p, _)| Arc::clone(p))
    }

    /// A place in the provider's bulkhead, or `None` when it is full. Never
    /// waits: a full provider is skipped, not queued for.
    #[must_use]
    pub fn try_enter(&self, name: &str) -> Option<Permit> {
        match self.providers.get(name)? {
            (_, None) => Some(Permit(None)),
            (_, Some(s)) => Arc::clone(s).try_acquire_owned().ok().map(|p| Permit(Some(p))),
        }
    }

    /// Whether a provider of that name is configured.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.providers.contains_key(name)
    }
}
