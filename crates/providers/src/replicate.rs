//! Replicate-style asynchronous predictions (`kind = "replicate"`): a
//! prediction is created with a webhook and an event filter, then the
//! provider calls back (signed the Standard Webhooks way under the account's
//! `whsec_` secret) or is polled; it can be canceled. Its output is text
//! (a string, or an array of string pieces) or the URLs of files, which the
//! platform re-hosts before anyone sees them.
//!
//! Unlike the chat adapters this is not a [`crate::Provider`]: nothing
//! answers in the request. The executor submits, and finishes the
//! execution when a callback or a poll brings the end.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use modelroute_types::{Secret, standard_webhooks};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::transport::{Transport, malformed};
use crate::{HttpConfig, ProviderError, ProviderErrorKind};

/// Settings of a Replicate-style provider.
///
/// ```toml
/// [providers.replicate]
/// kind = "replicate"
/// base_url = "https://api.replicate.com/v1"
/// # api_key: MODELROUTE_PROVIDERS__REPLICATE__API_KEY
/// # webhook_secret (GET /v1/webhooks/default/secret): MODELROUTE_PROVIDERS__REPLICATE__WEBHOOK_SECRET
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateConfig {
    /// The API root.
    pub base_url: String,
    /// The API token.
    #[serde(default)]
    pub api_key: Secret,
    /// The `whsec_…` secret its webhooks are signed with. Without one, no
    /// callback is believed: executions finish by polling only.
    #[serde(default)]
    pub webhook_secret: Secret,
    /// Time to an answer of each API call.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Calls in flight at once (0 = unbounded).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// When no callback has brought the end this long after the
    /// submission, the prediction is polled; then every `poll_every_secs`.
    #[serde(default = "default_poll_after")]
    pub poll_after_secs: u64,
    /// Between two polls.
    #[serde(default = "default_poll_every")]
    pub poll_every_secs: u64,
    /// Hosts its output files are downloaded from (`host`, `host:port` or
    /// `*.suffix`); an output elsewhere is refused.
    #[serde(default = "default_output_hosts")]
    pub output_hosts: Vec<String>,
}

fn default_output_hosts() -> Vec<String> {
    vec!["replicate.delivery".to_owned(), "*.replicate.delivery".to_owned()]
}

const fn default_timeout() -> u64 {
    30_000
}
const fn default_concurrency() -> usize {
    64
}
const fn default_poll_after() -> u64 {
    60
}
const fn default_poll_every() -> u64 {
    30
}

impl ReplicateConfig {
    /// Settings for the API at `base_url` with this token and webhook
    /// secret, every other value its default.
    #[must_use]
    pub fn new(base_url: impl Into<String>, api_key: Secret, webhook_secret: Secret) -> Self {
        Self {
            base_url: base_url.into(),
            api_key,
            webhook_secret,
            timeout_ms: default_timeout(),
            max_concurrency: default_concurrency(),
            poll_after_secs: default_poll_after(),
            poll_every_secs: default_poll_every(),
            output_hosts: default_output_hosts(),
        }
    }
}

/// Where a prediction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionStatus {
    /// Accepted, booting.
    Starting,
    /// Running.
    Processing,
    /// Finished with output.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Canceled.
    Canceled,
}

impl PredictionStatus {
    /// Whether it has ended.
    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// What a prediction's metrics report (what is billed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct PredictionMetrics {
    /// Prompt tokens (language models).
    #[serde(default)]
    pub input_token_count: Option<u64>,
    /// Generated tokens (language models).
    #[serde(default)]
    pub output_token_count: Option<u64>,
}

/// A prediction as the provider reports it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Prediction {
    /// The provider's id.
    pub id: String,
    /// Where it is.
    pub status: PredictionStatus,
    /// Its output so far (null until there is some).
    #[serde(default)]
    pub output: Value,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<Value>,
    /// Usage.
    #[serde(default)]
    pub metrics: PredictionMetrics,
}

/// A prediction's output, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PredictionOutput {
    /// Nothing (yet).
    None,
    /// Text: a string, or string pieces joined.
    Text(String),
    /// The URLs of output files (to be re-hosted; never shown).
    Files(Vec<String>),
}

impl Prediction {
    /// The output: URLs when every piece is an `http(s)` URL, else text.
    #[must_use]
    pub fn read_output(&self) -> PredictionOutput {
        let pieces: Vec<&str> = match &self.output {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => return PredictionOutput::None,
        };
        if pieces.is_empty() {
            return PredictionOutput::None;
        }
        let is_url = |p: &&str| p.starts_with("https://") || p.starts_with("http://");
        if pieces.iter().all(is_url) {
            PredictionOutput::Files(pieces.into_iter().map(str::to_owned).collect())
        } else {
            PredictionOutput::Text(pieces.concat())
        }
    }

    /// The error as text, if it failed.
    #[must_use]
    pub fn error_text(&self) -> Option<String> {
        match self.error.as_ref()? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// Why a callback is refused. Nothing it says reaches the execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefused {
    /// No secret is configured to check it with.
    #[error("no webhook secret is configured for this provider")]
    NoSecret,
    /// The headers are missing or unreadable.
    #[error("the webhook headers are missing or malformed")]
    Headers,
    /// The timestamp is more than five minutes away.
    #[error("the webhook timestamp is too old or in the future")]
    Stale,
    /// No signature verifies.
    #[error("the webhook signature does not verify")]
    Forged,
    /// The body is not a prediction.
    #[error("the webhook body is not a prediction")]
    Body,
}

/// How far a callback's timestamp may be from now.
pub const CALLBACK_TOLERANCE_SECS: i64 = 300;

/// A Replicate-style provider.
#[derive(Debug, Clone)]
pub struct ReplicateProvider {
    transport: Transport,
    config: ReplicateConfig,
}

impl ReplicateProvider {
    /// A provider with its own connection pool.
    ///
    /// # Errors
    /// An invalid base URL.
    pub fn new(config: ReplicateConfig) -> Result<Self, String> {
        let mut http = HttpConfig::new(config.base_url.clone(), config.api_key.clone());
        http.timeout_ms = config.timeout_ms;
        http.max_concurrency = config.max_concurrency;
        Ok(Self { transport: Transport::new(http)?, config })
    }

    /// Its settings.
    #[must_use]
    pub const fn config(&self) -> &ReplicateConfig {
        &self.config
    }

    /// When to poll a prediction no callback has finished.
    #[must_use]
    pub const fn poll_after(&self) -> Duration {
        Duration::from_secs(self.config.poll_after_secs)
    }

    /// Between polls.
    #[must_use]
    pub const fn poll_every(&self) -> Duration {
        Duration::from_secs(self.config.poll_every_secs)
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Prediction, ProviderError> {
        let auth = format!("Bearer {}", self.config.api_key.expose());
        let headers: &[(&str, &str)] = if self.config.api_key.is_empty() { &[] } else { &[("authorization", &auth)] };
        let response = self.transport.send(method, self.transport.uri(path)?, headers, body).await?;
        let bytes: Bytes = self.transport.read(response).await?;
        serde_json::from_slice(&bytes).map_err(|_| malformed("prediction"))
    }

    /// Creates a prediction of `model` (`owner/name`, or `owner/name:version`)
    /// on `input`, calling back `webhook` for `events` (`start`, `output`,
    /// `logs`, `completed`).
    ///
    /// # Errors
    /// The provider refused or could not be reached.
    pub async fn create(
        &self,
        model: &str,
        input: &Value,
        webhook: Option<&str>,
        events: &[&str],
    ) -> Result<Prediction, ProviderError> {
        let mut body = serde_json::Map::new();
        body.insert("input".into(), input.clone());
        if let Some(url) = webhook {
            body.insert("webhook".into(), json!(url));
            body.insert("webhook_events_filter".into(), json!(events));
        }
        match model.split_once(':') {
            Some((_, version)) => {
                body.insert("version".into(), json!(version));
                self.call(Method::POST, "/predictions", Some(&Value::Object(body))).await
            }
            None => {
                let Some((owner, name)) = model.split_once('/') else {
                    return Err(ProviderError::new(
                        ProviderErrorKind::InvalidRequest,
                        "the upstream model must be `owner/name` or `owner/name:version`",
                    ));
                };
                let body = Value::Object(body);
                self.call(Method::POST, &format!("/models/{owner}/{name}/predictions"), Some(&body)).await
            }
        }
    }

    /// The prediction as it stands.
    ///
    /// # Errors
    /// The provider refused or could not be reached.
    pub async fn get(&self, id: &str) -> Result<Prediction, ProviderError> {
        self.call(Method::GET, &format!("/predictions/{id}"), None).await
    }

    /// Asks the provider to cancel; answers the prediction as it then stands.
    ///
    /// # Errors
    /// The provider refused or could not be reached.
    pub async fn cancel(&self, id: &str) -> Result<Prediction, ProviderError> {
        self.call(Method::POST, &format!("/predictions/{id}/cancel"), None).await
    }

    /// Checks a callback (Standard Webhooks: `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`, in constant time, the
    /// timestamp within [`CALLBACK_TOLERANCE_SECS`] of `now`) and reads the
    /// prediction it carries.
    ///
    /// # Errors
    /// Why the callback is not believed.
    pub fn verify_callback(
        &self,
        webhook_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<Prediction, CallbackRefused> {
        let secret = self.config.webhook_secret.expose();
        if secret.is_empty() {
            return Err(CallbackRefused::NoSecret);
        }
        let (Some(id), Some(timestamp), Some(signature)) = (webhook_id, timestamp, signature) else {
            return Err(CallbackRefused::Headers);
        };
        let timestamp: i64 = timestamp.trim().parse().map_err(|_| CallbackRefused::Headers)?;
        if (now - timestamp).abs() > CALLBACK_TOLERANCE_SECS {
            return Err(CallbackRefused::Stale);
        }
        if !standard_webhooks::verify(secret, id, timestamp, body, signature, now, CALLBACK_TOLERANCE_SECS) {
            return Err(CallbackRefused::Forged);
        }
        serde_json::from_slice(body).map_err(|_| CallbackRefused::Body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(output: Value) -> Prediction {
        Prediction {
            id: "p".into(),
            status: PredictionStatus::Succeeded,
            output,
            error: None,
            metrics: PredictionMetrics::default(),
        }
    }

    #[test]
    fn output_is_files_when_every_piece_is_a_url_and_text_otherwise() {
        assert_eq!(prediction(Value::Null).read_output(), PredictionOutput::None);
        assert_eq!(
            prediction(json!(["https://a/x.png", "http://b/y.png"])).read_output(),
            PredictionOutput::Files(vec!["https://a/x.png".into(), "http://b/y.png".into()])
        );
        assert_eq!(
            prediction(json!("https://a/x.png")).read_output(),
            PredictionOutput::Files(vec!["https://a/x.png".into()])
        );
        assert_eq!(prediction(json!(["Hel", "lo"])).read_output(), PredictionOutput::Text("Hello".into()));
        assert_eq!(
            prediction(json!(["see ", "https://a"])).read_output(),
            PredictionOutput::Text("see https://a".into())
        );
    }

    #[test]
    fn a_callback_is_believed_only_signed_fresh_and_whole() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let p = ReplicateProvider::new(ReplicateConfig::new(
            "http://127.0.0.1:9/v1",
            Secret::default(),
            Secret::new(secret),
        ))
        .unwrap();
        let body = json!({ "id": "p1", "status": "succeeded", "output": "hi" }).to_string();
        let sig = standard_webhooks::sign(secret, "msg_1", 1_000, body.as_bytes()).unwrap();
        let ok = p.verify_callback(Some("msg_1"), Some("1000"), Some(&sig), body.as_bytes(), 1_100).unwrap();
        assert_eq!((ok.id.as_str(), ok.status), ("p1", PredictionStatus::Succeeded));
        let refused =
            |id, ts, sig: &str, body: &[u8], now| p.verify_callback(Some(id), Some(ts), Some(sig), body, now).err();
        assert_eq!(refused("msg_1", "1000", &sig, body.as_bytes(), 1_301), Some(CallbackRefused::Stale));
        assert_eq!(refused("msg_2", "1000", &sig, body.as_bytes(), 1_000), Some(CallbackRefused::Forged));
        assert_eq!(refused("msg_1", "1000", &sig, b"{}", 1_000), Some(CallbackRefused::Forged));
        assert_eq!(refused("msg_1", "x", &sig, body.as_bytes(), 1_000), Some(CallbackRefused::Headers));
        assert_eq!(
            p.verify_callback(None, Some("1000"), Some(&sig), body.as_bytes(), 1_000).err(),
            Some(CallbackRefused::Headers)
        );
        let unsigned =
            ReplicateProvider::new(ReplicateConfig::new("http://127.0.0.1:9/v1", Secret::default(), Secret::default()))
                .unwrap();
        assert_eq!(
            unsigned.verify_callback(Some("msg_1"), Some("1000"), Some(&sig), body.as_bytes(), 1_000).err(),
            Some(CallbackRefused::NoSecret)
        );
    }
}
