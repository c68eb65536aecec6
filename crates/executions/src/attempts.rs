//! The attempt loop: routes in order, each retried with backoff while its
//! failure is retryable and the deadline and retry budget allow, behind the
//! provider's bulkhead and the route's circuit breaker; every try recorded
//! as a typed attempt of the decision record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use modelroute_ledger::Ledger;
use modelroute_providers::{ChatRequest, Permit, ProviderClient, ProviderError, ProviderErrorKind, Usage};
use modelroute_routing::{Candidate, CanonicalError, Classification, Decision, UpstreamFailure};
use serde::Serialize;

use crate::ExecutionError;
use crate::admission::Admitted;
use crate::executor::Executor;

/// What the execution record keeps of a routing decision: the plan (every
/// route considered, ranked or excluded, and why) and every try.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DecisionRecord {
    /// The plan (of the first model of the chain that could serve).
    #[serde(flatten)]
    pub(crate) plan: Decision,
    /// With fallback models: every model of the chain in order, and why
    /// one could not serve this request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) chain: Vec<ChainLink>,
    /// The fallback models' plans, after `plan`'s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) fallback_plans: Vec<Decision>,
    /// The tries, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) attempts: Vec<AttemptRecord>,
}

/// One model of a fallback chain.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct ChainLink {
    /// Its public slug.
    pub(crate) model: String,
    /// Why it could not serve this request (no route fits it), if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unavailable: Option<String>,
}

/// One try of one route.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct AttemptRecord {
    /// The route's public id.
    pub(crate) route: String,
    /// The public slug of the model the route serves.
    pub(crate) model: String,
    /// How it went.
    pub(crate) outcome: Outcome,
    /// The canonical error of a failure, or why the route was skipped.
    pub(crate) error_code: Option<&'static str>,
    /// It continued the answer of the attempt before it, which was cut off
    /// (the partial answer sent as an assistant prefix).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) continued: bool,
    /// What a failed attempt delivered before it failed, and is billed for
    /// (the built-in tokenizer's count: a cut stream reports no usage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) billed: Option<Usage>,
    /// The provider reported no usage: the attempt is billed at the
    /// built-in tokenizer's count.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) usage_estimated: bool,
    /// Unreadable chunks of its stream that were skipped.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) malformed_chunks: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
const fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl AttemptRecord {
    fn new(candidate: &Candidate, outcome: Outcome, error_code: Option<&'static str>) -> Self {
        Self {
            route: candidate.route.public_id.clone(),
            model: candidate.route.model.clone(),
            outcome,
            error_code,
            continued: false,
            billed: None,
            usage_estimated: false,
            malformed_chunks: 0,
        }
    }
}

/// How a try went.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// It answered.
    Succeeded,
    /// It failed (the code says how).
    Failed,
    /// It was not called: its bulkhead was full, its breaker open, or its window too small.
    Skipped,
}

impl Admitted {
    /// The decision record as the execution row stores it.
    pub(crate) fn decision_json(&self) -> Option<String> {
        serde_json::to_string(&self.decision).ok()
    }

    /// The answer's text as the record keeps it (`{"text": …}`), when kept.
    pub(crate) fn output_json(&self) -> Option<String> {
        self.output.as_ref().map(|text| serde_json::json!({ "text": text }).to_string())
    }

    /// Appends a try.
    pub(crate) fn record_attempt(&mut self, candidate: &Candidate, failure: Option<CanonicalError>) {
        self.record_attempt_with(candidate, failure, |_| {});
    }

    /// Appends a try, with what `fill` adds to it (a stream's details).
    pub(crate) fn record_attempt_with(
        &mut self,
        candidate: &Candidate,
        failure: Option<CanonicalError>,
        fill: impl FnOnce(&mut AttemptRecord),
    ) {
        let outcome = if failure.is_some() { Outcome::Failed } else { Outcome::Succeeded };
        let mut attempt = AttemptRecord::new(candidate, outcome, failure.map(CanonicalError::as_str));
        fill(&mut attempt);
        self.decision.attempts.push(attempt);
    }

    /// The error when no route could even be tried (all full or open).
    pub(crate) fn nothing_tried() -> ExecutionError {
        ExecutionError::Upstream {
            canonical: CanonicalError::Overloaded,
            message: "every route of this model is at capacity or failing; retry shortly".into(),
            client_status: None,
        }
    }

    pub(crate) fn record_skip(&mut self, candidate: &Candidate, why: &'static str) {
        self.decision.attempts.push(AttemptRecord::new(candidate, Outcome::Skipped, Some(why)));
    }
}

/// The client-facing error for a classified failure. The provider's own
/// message is passed on only when the client must change its request.
pub(crate) fn upstream_error(class: Classification, e: &ProviderError) -> ExecutionError {
    let canonical = class.canonical;
    let message = match (canonical.client_needs_upstream_message(), &e.upstream_message) {
        (true, Some(m)) => format!("the model rejected the request: {m}"),
        (true, None) => e.message.clone(),
        (false, _) => match canonical {
            CanonicalError::RateLimited | CanonicalError::Overloaded => "the model is overloaded; retry shortly".into(),
            CanonicalError::Timeout => "the model did not answer in time".into(),
            _ => e.message.clone(),
        },
    };
    ExecutionError::Upstream { canonical, message, client_status: class.client_status }
}

/// The request as one route's provider receives it.
pub(crate) fn upstream_request(request: &ChatRequest, candidate: &Candidate) -> ChatRequest {
    let mut upstream = request.clone();
    upstream.model.clone_from(&candidate.route.upstream_model);
    upstream.max_tokens = Some(candidate.max_output_tokens);
    upstream
}

impl<L: Ledger + 'static> Executor<L> {
    /// What a provider failure means, by the error-mapping rules.
    pub(crate) fn classify(&self, candidate: &Candidate, e: &ProviderError) -> Classification {
        let fallback = match e.kind {
            ProviderErrorKind::Timeout | ProviderErrorKind::FirstTokenTimeout => CanonicalError::Timeout,
            ProviderErrorKind::RateLimited => CanonicalError::RateLimited,
            ProviderErrorKind::InvalidRequest => CanonicalError::InvalidRequest,
            ProviderErrorKind::Unavailable | ProviderErrorKind::StreamCut | ProviderErrorKind::Malformed => {
                CanonicalError::UpstreamError
            }
        };
        self.inner.rules.classify(&UpstreamFailure {
            provider: &candidate.route.provider,
            status: e.status,
            code: e.upstream_code.as_deref(),
            message: e.upstream_message.as_deref().unwrap_or(&e.message),
            fallback,
        })
    }

    /// A place in the route provider's bulkhead and its breaker's leave to
    /// call; a refusal is recorded as a skipped attempt.
    /// How long a streamed call of `candidate` may wait for its first sign
    /// of progress: the route's own limit, else one derived from what it
    /// showed (`Health::first_token_limit`).
    pub(crate) fn first_token_limit(&self, candidate: &Candidate) -> Duration {
        let retry = &self.inner.retry;
        candidate.route.first_token_timeout_ms.map_or_else(
            || {
                self.inner.health.first_token_limit(
                    &candidate.route.id,
                    Duration::from_millis(retry.first_token_floor_ms),
                    Duration::from_millis(retry.first_token_timeout_ms),
                )
            },
            Duration::from_millis,
        )
    }

    pub(crate) fn enter(&self, admitted: &mut Admitted, candidate: &Candidate) -> Option<Permit> {
        let Some(permit) = admitted.providers.try_enter(&candidate.route.provider) else {
            admitted.record_skip(candidate, "bulkhead_full");
            return None;
        };
        if !self.inner.health.try_acquire(&candidate.route.id, Instant::now()) {
            admitted.record_skip(candidate, "circuit_open");
            return None;
        }
        Some(permit)
    }

    /// Feeds a call's outcome to the route's breaker and returns the
    /// failure's classification. Whether a failure counts against the route
    /// is the error-mapping rules' call (a rejected request does not).
    pub(crate) fn observe(&self, candidate: &Candidate, error: Option<&ProviderError>) -> Option<Classification> {
        let class = error.map(|e| self.classify(candidate, e));
        let healthy = class.is_none_or(|c| !c.counts_against_breaker);
        self.inner.health.record(&candidate.route.id, healthy, Instant::now());
        class
    }

    /// Tries the admitted routes in order until one answers: each route is
    /// retried with backoff (or its `Retry-After`) while the classification
    /// says retryable and the deadline allows, then the next route is tried.
    /// A failure that is not retryable ends the search.
    pub(crate) async fn call_routes<T>(
        &self,
        admitted: &mut Admitted,
        request: &ChatRequest,
        call: impl AsyncFn(Arc<ProviderClient>, ChatRequest, Duration) -> Result<T, ProviderError>,
    ) -> Result<(Candidate, T, Permit), ExecutionError> {
        let retry = &self.inner.retry;
        let deadline = admitted.deadline;
        let mut last_error = None;
        // After a context-length refusal, only routes with a larger window are worth trying.
        let mut needs_context_above: Option<u32> = None;
        'routes: for candidate in admitted.candidates.clone() {
            let Some(provider) = admitted.providers.get(&candidate.route.provider) else { continue };
            if needs_context_above.is_some_and(|w| candidate.route.context_window <= w) {
                admitted.record_skip(&candidate, "context_too_small");
                continue;
            }
            let first_token = self.first_token_limit(&candidate);
            for n in 0.. {
                let Some(permit) = self.enter(admitted, &candidate) else { continue 'routes };
                let started = Instant::now();
                let outcome = match tokio::time::timeout_at(
                    deadline,
                    call(Arc::clone(&provider), upstream_request(request, &candidate), first_token),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ProviderError::new(ProviderErrorKind::Timeout, "the request's deadline passed")),
                };
                let e = match outcome {
                    Ok(value) => {
                        // Time to the answer, or to a stream's first event.
                        let took = started.elapsed();
                        self.inner.health.record_latency(&candidate.route.id, took);
                        if admitted.stream {
                            self.inner.health.record_first_token(&candidate.route.id, took);
                        }
                        return Ok((candidate, value, permit));
                    }
                    Err(e) => e,
                };
                drop(permit);
                let class = self.observe(&candidate, Some(&e)).unwrap_or_else(|| self.classify(&candidate, &e));
                admitted.record_attempt(&candidate, Some(class.canonical));
                tracing::warn!(
                    execution_id = %admitted.id, route = %candidate.route.id, attempt = n + 1,
                    canonical = class.canonical.as_str(), status = ?e.status, upstream = ?e.upstream_message,
                    "route failed"
                );
                last_error = Some(upstream_error(class, &e));
                if tokio::time::Instant::now() >= deadline {
                    break 'routes;
                }
                if class.canonical == CanonicalError::ContextLengthExceeded {
                    // Never the same route again; a larger window may take it.
                    needs_context_above = Some(candidate.route.context_window);
                    continue 'routes;
                }
                if matches!(e.kind, ProviderErrorKind::Timeout | ProviderErrorKind::FirstTokenTimeout)
                    && class.retryable
                {
                    // A route that did not answer in time is unlikely to the
                    // second time: it is left, not waited on twice.
                    continue 'routes;
                }
                if !class.retryable {
                    break 'routes;
                }
                match retry.backoff(n, fastrand::u64(..), e.retry_after) {
                    Some(wait)
                        if tokio::time::Instant::now() + wait < deadline
                            && self.inner.budget.try_withdraw(Instant::now()) =>
                    {
                        tokio::time::sleep(wait).await;
                    }
                    _ => continue 'routes,
                }
            }
        }
        Err(last_error.unwrap_or_else(Admitted::nothing_tried))
    }
}
