use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{async_executions, executions};
use modelroute_db::{DbPool, db_run};
use modelroute_ledger::Ledger;
use modelroute_providers::{
    ChatRequest, ChatResponse, FinishReason, Provider, ProviderClient, ProviderRegistry, Usage,
};
use modelroute_routing::{Catalogue, ErrorRules, Health, Preferences, RetryBudget, RetryConfig};
use modelroute_types::{ApiKeyId, ExecutionId, Money, OrgId, ProjectId, failpoint, time};
use tokio::sync::{mpsc, oneshot};

use crate::admission::AdmitAs;
use crate::leases::{KeeperRunning, Leases};
use crate::preferences::{MAX_FALLBACKS, OrgRouting, PreferenceStore, RequestPreferences};
use crate::record::{AsyncRow, ExecutionRow};
use crate::{Execution, ExecutionError, ExecutionStatus};

/// Who is paying for an execution.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The tenant whose balance pays.
    pub org_id: OrgId,
    /// The project.
    pub project_id: ProjectId,
    /// The API key used.
    pub api_key_id: ApiKeyId,
    /// What this request asks of routing on top of the org's preferences.
    pub preferences: RequestPreferences,
    /// Models to fall back to, in order, when the requested one cannot
    /// serve (empty: the org's fallbacks for the model, if any).
    pub fallback_models: Vec<String>,
}

/// A finished non-streamed execution.
#[derive(Clone, Debug)]
pub struct Completed {
    /// The execution's id.
    pub execution_id: ExecutionId,
    /// When it was accepted.
    pub created_at: NaiveDateTime,
    /// The public slug of the model that answered (a fallback model's, when
    /// the requested one could not serve).
    pub model: String,
    /// The provider's answer.
    pub response: ChatResponse,
    /// What was charged.
    pub cost: Money,
}

/// One event of a streamed execution.
#[derive(Debug)]
pub enum StreamItem {
    /// More text.
    Delta(String),
    /// Part of a tool call (see [`StreamEvent::ToolCallDelta`]); boxed,
    /// as the rare large variants are, so every item in a stream's channel
    /// takes 32 bytes.
    ToolCallDelta(Box<ToolCallChunk>),
    /// Success: settled.
    Done {
        /// Why generation ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
        /// What was charged.
        cost: Money,
    },
    /// Failure after the stream started; the hold was released.
    Failed(Box<ExecutionError>),
}

/// Part of a streamed tool call.
#[derive(Debug)]
pub struct ToolCallChunk {
    /// Which call.
    pub index: u32,
    /// Its id (first delta only).
    pub id: Option<String>,
    /// The tool (first delta only).
    pub name: Option<String>,
    /// More argument text.
    pub arguments: String,
}

/// A streamed execution that has been admitted (the hold is placed).
#[derive(Debug)]
pub struct StreamingExecution {
    /// The execution's id.
    pub execution_id: ExecutionId,
    /// When it was accepted.
    pub created_at: NaiveDateTime,
    /// The public slug of the model answering (a fallback model's, when
    /// the requested one could not serve).
    pub model: String,
    /// The events, ending with `Done` or `Failed`.
    pub events: mpsc::Receiver<StreamItem>,
}

/// Runs executions. Cheap to clone.
#[derive(Debug)]
pub struct Executor<L> {
    pub(crate) inner: Arc<Inner<L>>,
}

/// An executor that does not keep it alive (for what the executor itself
/// holds, such as its event hooks).
#[derive(Debug)]
pub struct WeakExecutor<L>(std::sync::Weak<Inner<L>>);

impl<L> Clone for WeakExecutor<L> {
    fn clone(&self) -> Self {
        Self(std::sync::Weak::clone(&self.0))
    }
}

impl<L> WeakExecutor<L> {
    /// The executor, while it lives.
    #[must_use]
    pub fn upgrade(&self) -> Option<Executor<L>> {
        self.0.upgrade().map(|inner| Executor { inner })
    }
}

impl<L> Executor<L> {
    /// A reference that does not keep the executor alive.
    #[must_use]
    pub fn downgrade(&self) -> WeakExecutor<L> {
        WeakExecutor(Arc::downgrade(&self.inner))
    }
}

impl<L> Clone for Executor<L> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

#[derive(Debug)]
pub(crate) struct Inner<L> {
    pub(crate) pool: DbPool,
    pub(crate) ledger: L,
    /// Swapped whole on reload; an execution keeps the one it was admitted with.
    pub(crate) table: RwLock<Arc<RouteTable>>,
    pub(crate) health: Arc<Health>,
    pub(crate) rules: Arc<ErrorRules>,
    pub(crate) retry: RetryConfig,
    pub(crate) preferences: PreferenceStore,
    pub(crate) budget: RetryBudget,
    /// The leases of running executions' holds.
    pub(crate) leases: Arc<Leases>,
    /// Whether open routes are probed by the platform (`[routing.breaker] active_probes`).
    pub(crate) breaker_probes: bool,
    /// Whether the prober runs.
    pub(crate) prober: Arc<std::sync::atomic::AtomicBool>,
    /// Asynchronous executions' hooks and in-process signals.
    pub(crate) asynchronous: crate::queued::AsyncState,
}

/// The catalogue and the providers its routes name: replaced together.
#[derive(Debug)]
pub(crate) struct RouteTable {
    pub(crate) catalogue: Arc<Catalogue>,
    pub(crate) providers: Arc<ProviderRegistry>,
}

/// The lease on an execution's hold unless configured otherwise.
const DEFAULT_HOLD_LEASE: Duration = Duration::from_secs(120);

impl<L: Ledger + 'static> Executor<L> {
    /// An executor over these parts.
    #[must_use]
    pub fn new(
        pool: DbPool,
        ledger: L,
        catalogue: Arc<Catalogue>,
        providers: Arc<ProviderRegistry>,
        health: Arc<Health>,
        rules: Arc<ErrorRules>,
        retry: RetryConfig,
    ) -> Self {
        let budget = RetryBudget::new(retry.budget_percent, retry.budget_min_per_second);
        let breaker_probes = health.active_probes();
        Self {
            inner: Arc::new(Inner {
                pool,
                ledger,
                table: RwLock::new(Arc::new(RouteTable { catalogue, providers })),
                health,
                rules,
                retry,
                preferences: PreferenceStore::default(),
                budget,
                leases: Arc::new(Leases::new(DEFAULT_HOLD_LEASE)),
                breaker_probes,
                prober: Arc::default(),
                asynchronous: crate::queued::AsyncState::default(),
            }),
        }
    }

    /// The same, placing each execution's hold with an expiry `lease` away
    /// and renewing it every third of `lease` while the execution runs
    /// (`[ledger] hold_timeout_secs` on the server).
    #[must_use]
    pub fn with_hold_lease(self, lease: Duration) -> Self {
        self.inner.leases.set_lease(lease);
        self
    }

    /// Starts the task that renews the leases of running executions' holds,
    /// unless it runs. It holds the executor weakly: it ends with it.
    pub(crate) fn keep_leases(&self) {
        let leases = &self.inner.leases;
        if !leases.claim_keeper() {
            return;
        }
        let running = KeeperRunning(Arc::clone(leases));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let _running = running;
            loop {
                let every = match weak.upgrade() {
                    Some(inner) => inner.leases.renew_every(),
                    None => return,
                };
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let holds = inner.leases.holds();
                if holds.is_empty() {
                    continue;
                }
                let lease = chrono::Duration::from_std(inner.leases.lease()).unwrap_or(chrono::Duration::MAX);
                let until = time::now().checked_add_signed(lease).unwrap_or(NaiveDateTime::MAX);
                match inner.ledger.renew(&holds, until).await {
                    Ok(n) => {
                        tracing::debug!(renewed = n, running = holds.len(), "renewed the holds of running executions");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, running = holds.len(), "renewing the holds of running executions failed; retrying");
                    }
                }
            }
        });
    }

    pub(crate) fn table(&self) -> Arc<RouteTable> {
        Arc::clone(&self.inner.table.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(crate) fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    /// The routes' circuit breakers and observed latencies.
    #[must_use]
    pub fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }

    /// The catalogue in use.
    #[must_use]
    pub fn catalogue(&self) -> Arc<Catalogue> {
        Arc::clone(&self.table().catalogue)
    }

    /// Replaces the catalogue and the providers (a configuration reload).
    /// Executions under way finish with what they were admitted with;
    /// breakers and latency averages are kept for routes that stay.
    pub fn reload(&self, catalogue: Arc<Catalogue>, providers: Arc<ProviderRegistry>) {
        let table = Arc::new(RouteTable { catalogue, providers });
        *self.inner.table.write().unwrap_or_else(std::sync::PoisonError::into_inner) = table;
    }

    /// The org's routing preferences (defaults when it set none).
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn preferences(&self, org: &OrgId) -> Result<Preferences, ExecutionError> {
        self.inner.preferences.get(&self.inner.pool, org).await
    }

    /// Replaces the org's routing preferences (its fallbacks stay).
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn set_preferences(&self, org: &OrgId, preferences: Preferences) -> Result<(), ExecutionError> {
        let routing = self.routing(org).await?;
        self.set_routing(org, OrgRouting { preferences, ..routing }).await
    }

    /// The org's routing settings: preferences and fallback models.
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn routing(&self, org: &OrgId) -> Result<OrgRouting, ExecutionError> {
        self.inner.preferences.routing(&self.inner.pool, org).await
    }

    /// Replaces the org's routing settings. Every model a fallback list
    /// names, and every model given one, must be in the catalogue, and no
    /// list may be longer than [`MAX_FALLBACKS`].
    ///
    /// # Errors
    /// [`ExecutionError::InvalidRequest`] naming the unknown model; the data layer failed.
    pub async fn set_routing(&self, org: &OrgId, routing: OrgRouting) -> Result<(), ExecutionError> {
        let catalogue = self.catalogue();
        for (model, list) in routing.fallbacks.iter() {
            let unknown = std::iter::once(model).chain(list).find(|m| catalogue.model(m).is_none());
            if let Some(m) = unknown {
                return Err(ExecutionError::InvalidRequest {
                    param: "fallbacks",
                    message: format!("the model `{m}` does not exist"),
                });
            }
            if list.len() > MAX_FALLBACKS {
                return Err(ExecutionError::InvalidRequest {
                    param: "fallbacks",
                    message: format!("`{model}` names more than {MAX_FALLBACKS} fallback models"),
                });
            }
        }
        self.inner.preferences.set(&self.inner.pool, org, routing).await
    }

    /// Runs a chat request to completion. `request.model` is the public slug.
    ///
    /// # Errors
    /// Routing, admission (insufficient balance) and provider failures. A
    /// failure before the hold writes nothing; one after it releases the hold
    /// and records the failed execution.
    pub async fn run(&self, caller: Caller, request: ChatRequest) -> Result<Completed, ExecutionError> {
        let this = self.clone();
        // Spawned: a disconnecting client drops this future, not the work.
        tokio::spawn(async move { this.run_detached(caller, request).await })
            .await
            .map_err(|_| ExecutionError::TaskFailed)?
    }

    async fn run_detached(&self, caller: Caller, request: ChatRequest) -> Result<Completed, ExecutionError> {
        let mut admitted = self.admit(&caller, &request, AdmitAs::Now { stream: false }).await?;
        failpoint("executions.before_provider");
        let tried = self
            .call_routes(&mut admitted, &request, async |provider: Arc<ProviderClient>, upstream: ChatRequest, _| {
                provider.chat(&upstream).await
            })
            .await;
        self.recorded(&mut admitted).await?;
        failpoint("executions.before_settle");
        let (candidate, response, _permit) = match tried {
            Ok(ok) => ok,
            Err(e) => {
                self.fail(&admitted, &e).await;
                return Err(e);
            }
        };
        self.observe(&candidate, None);
        admitted.record_attempt(&candidate, None);
        let legs = [(candidate, response.usage)];
        let (cost, _) = self.settle(&admitted, &legs, response.finish_reason, ExecutionStatus::Succeeded, None).await?;
        let [(candidate, _)] = legs;
        Ok(Completed {
            execution_id: admitted.id,
            created_at: admitted.created_at,
            model: candidate.route.model.clone(),
            response,
            cost,
        })
    }

    /// Starts a streamed execution. Returns once the hold is placed; the
    /// answer arrives on [`StreamingExecution::events`].
    ///
    /// # Errors
    /// Routing and admission failures (nothing is written), or a provider
    /// that fails before its first byte (the hold is released).
    pub async fn start_stream(
        &self,
        caller: Caller,
        request: ChatRequest,
    ) -> Result<StreamingExecution, ExecutionError> {
        let (admitted_tx, admitted_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move { this.stream_detached(caller, request, admitted_tx, tx).await });
        let (execution_id, created_at, model) = admitted_rx.await.map_err(|_| ExecutionError::TaskFailed)??;
        Ok(StreamingExecution { execution_id, created_at, model, events: rx })
    }

    /// An execution of `org`.
    ///
    /// # Errors
    /// [`ExecutionError::NotFound`] when `org` has no such execution.
    pub async fn get(&self, org: &OrgId, id: &ExecutionId) -> Result<Execution, ExecutionError> {
        let pool = &self.inner.pool;
        let row: Option<(ExecutionRow, Option<AsyncRow>)> = db_run!(pool, |conn| executions::table
            .left_join(async_executions::table)
            .filter(executions::id.eq(id.as_str()))
            .filter(executions::org_id.eq(org.as_str()))
            .select((ExecutionRow::as_select(), Option::<AsyncRow>::as_select()))
            .first(conn)
            .await
            .optional())?;
        Ok(row.ok_or(ExecutionError::NotFound)?.try_into()?)
    }
}

#[cfg(test)]
mod tests {
    /// Every open stream's channel allocates 32 of these at once.
    #[test]
    fn a_stream_item_is_small() {
        assert!(size_of::<super::StreamItem>() <= 32, "{} bytes", size_of::<super::StreamItem>());
    }
}
