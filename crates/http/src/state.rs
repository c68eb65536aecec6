use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use modelroute_db::DbPool;
use modelroute_executions::Executor;
use modelroute_identity::{Identity, RateLimiter};
use modelroute_ledger::SqlLedger;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) pool: DbPool,
    pub(crate) identity: Identity,
    pub(crate) ledger: SqlLedger,
    pub(crate) billing: modelroute_billing::Billing,
    pub(crate) executor: Executor<SqlLedger>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) per_key_per_minute: u32,
    pub(crate) per_org_per_minute: u32,
    pub(crate) per_ip_auth_per_minute: u32,
    /// `scheme://host[:port]` of `[identity] public_url`: the one origin
    /// cookie-authenticated writes may come from.
    pub(crate) public_origin: String,
    /// What `/readyz` and `/metrics` need, when set.
    pub(crate) operator_token: Option<modelroute_types::Secret>,
    /// Limits on reading request bodies.
    pub(crate) body: crate::body::BodyPolicy,
}

pub(crate) type State = actix_web::web::Data<Arc<AppState>>;
