//! Active health probes: an open route is probed by the platform's own
//! calls on a schedule, not by customers' requests. One task per executor
//! asks `Health::due_probes` every `PROBE_TICK` and sends each due route a
//! one-token request; a success (or a refusal that says nothing about the
//! route's health) counts towards closing its breaker, a failure opens it
//! for another `open_ms`. So a route that heals is back within `open_ms`
//! plus a tick and `half_open_probes` calls, however little traffic there is.
//! The probes' cost (a few tokens) is the platform's: no org pays for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use modelroute_ledger::Ledger;
use modelroute_providers::{ChatRequest, Message, Provider as _, Role};
use modelroute_routing::Candidate;

use crate::executor::Executor;

/// How often the prober looks for routes due for a probe.
const PROBE_TICK: Duration = Duration::from_millis(100);

/// The longest a probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Marks the prober as stopped when its task ends (also when its runtime
/// shuts down), so the next admission starts another.
struct ProberRunning(Arc<AtomicBool>);

impl Drop for ProberRunning {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<L: Ledger + 'static> Executor<L> {
    /// Starts the prober unless it runs. It holds the executor weakly and
    /// ends with it.
    pub(crate) fn keep_probing(&self) {
        if !self.inner.breaker_probes || self.inner.prober.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = ProberRunning(Arc::clone(&self.inner.prober));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let _running = running;
            loop {
                tokio::time::sleep(PROBE_TICK).await;
                let Some(inner) = weak.upgrade() else { return };
                let executor = Executor { inner };
                for route in executor.inner.health.due_probes(Instant::now()) {
                    let executor = executor.clone();
                    tokio::spawn(async move { executor.probe(&route).await });
                }
            }
        });
    }

    /// Sends `route` one probe and reports its outcome to its breaker.
    async fn probe(&self, route_id: &str) {
        let table = self.table();
        let route = table.catalogue.models().flat_map(|m| m.routes.iter()).find(|r| r.id == route_id).cloned();
        let (Some(route), Some(provider)) =
            (route.as_ref(), route.as_ref().and_then(|r| table.providers.get(&r.provider)))
        else {
            // Reloaded away: nothing left to probe.
            self.inner.health.record_probe(route_id, true, Instant::now());
            return;
        };
        let mut request = ChatRequest::new(route.upstream_model.clone(), vec![Message::text(Role::User, "ping")]);
        request.max_tokens = Some(1);
        let healthy = match tokio::time::timeout(PROBE_TIMEOUT, provider.chat(&request)).await {
            Ok(Ok(_)) => true,
            // A refusal of the request itself says the route is answering.
            Ok(Err(e)) => {
                let candidate = Candidate {
                    route: Arc::clone(route),
                    max_output_tokens: 1,
                    worst_case: modelroute_types::Money::ZERO,
                    latency: None,
                };
                !self.classify(&candidate, &e).counts_against_breaker
            }
            Err(_) => false,
        };
        tracing::info!(route = %route.id, healthy, "probed a route whose breaker is open");
        self.inner.health.record_probe(route_id, healthy, Instant::now());
    }
}
