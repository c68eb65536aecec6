use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{BuiltinConfig, HttpConfig, ReplicateConfig};

/// One provider's configuration, tagged by `kind`:
///
/// ```toml
/// [providers.builtin]
/// kind = "builtin"
/// latency_ms = 0
///
/// [providers.openai]
/// kind = "openai_compatible"
/// base_url = "https://api.openai.com/v1"
/// # api_key: MODELROUTE_PROVIDERS__OPENAI__API_KEY
///
/// [providers.anthropic]
/// kind = "anthropic"
/// base_url = "https://api.anthropic.com/v1"
///
/// [providers.gemini]
/// kind = "gemini"
/// base_url = "https://generativelanguage.googleapis.com/v1beta"
///
/// [providers.replicate]
/// kind = "replicate"
/// base_url = "https://api.replicate.com/v1"
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    /// The built-in deterministic provider.
    Builtin(BuiltinConfig),
    /// An OpenAI-compatible chat-completions API.
    OpenaiCompatible(HttpConfig),
    /// Anthropic Messages.
    Anthropic(HttpConfig),
    /// Google Gemini `generateContent`.
    Gemini(HttpConfig),
    /// Replicate-style asynchronous predictions (served by `POST /v1/executions` only).
    Replicate(ReplicateConfig),
}

/// The `[providers]` section: providers by name. Routes name them.
pub type ProvidersConfig = BTreeMap<String, ProviderConfig>;

/// The embedded default: one built-in provider named `builtin`.
#[must_use]
pub fn default_providers() -> ProvidersConfig {
    BTreeMap::from([("builtin".to_owned(), ProviderConfig::Builtin(BuiltinConfig::default()))])
}
