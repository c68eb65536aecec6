//! The attempt loop: routes in order, each retried with backoff while its
//! failure is retryable and the deadline and retry budget allow, behind the
//! provider's bulkhead and the route's circuit breaker; every try recorded
//! as a typed attempt of the decision record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use modelroute_ledger::Ledger;
use modelroute_providers::{ChatRequest, Permit, ProviderClient, ProviderError, ProviderErrorKind};
use modelroute_routing::{Candidate, CanonicalError, Classification, Decision, UpstreamFailure};
use serde::Serialize;

use crate::ExecutionError;
use crate::admission::Admitted;
use crate::executor::Executor;

/// What the execution record keeps of a routing decision: the plan (every
/// route considered, ranked or excluded, and why) and every try.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DecisionRecord {
    /// The plan.
    #[serde(flatten)]
    pub(crate) plan: Decision,
    /// The tries, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) attempts: Vec<AttemptRecord>,
}

/// One try of one route.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct AttemptRecord {
    /// The route's public id.
    pub(crate) route: String,
    /// How it went.
    pub(crate) outcome: Outcome,
    /// The canonical error of a failure, or why the route was skipped.
    pub(crate) error_code: Option<&'static str>,
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

    pub(crate) fn record_attempt(&mut self, candidate: &Candidate, failure: Option<CanonicalError>) {
        let outcome = if failure.is_some() { Outcome::Failed } else { Outcome::Succeeded };
        self.decision.attempts.push(AttemptRecord {
            route: candidate.route.public_id.clone(),
            outcome,
            error_code: failure.map(CanonicalError::as_str),
        });
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
        self.decision.attempts.push(AttemptRecord {
            route: candidate.route.public_id.clone(),
            outcome: Outcome::Skipped,
            error_code: Some(why),
        });
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
            ProviderErrorKind::Unavailable | ProviderErrorKind::StreamCut => CanonicalError::UpstreamError,
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
        let deadline = tokio::time::Instant::now() + Duration::from_millis(retry.deadline_ms);
        let mut last_error = None;
        // After a context-length refusal, only routes with a larger window are worth trying.
        let mut needs_context_above: Option<u32> = None;
        'routes: for candidate in admitted.candidates.clone() {
            let Some(provider) = admitted.providers.get(&candidate.route.provider) else { continue };
            if needs_context_above.is_some_and(|w| candidate.route.context_window <= w) {
                admitted.record_skip(&candidate, "context_too_small");
                continue;
            }
            let first_token =
                Duration::from_millis(candidate.route.first_token_timeout_ms.unwrap_or(retry.first_token_timeout_ms));
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
                        self.inner.health.record_latency(&candidate.route.id, started.elapsed());
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
                if e.kind == ProviderErrorKind::FirstTokenTimeout && class.retryable {
                    continue 'routes; // a slow route is left, not waited on twice
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
