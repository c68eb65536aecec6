use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use modelroute_app::Services;
use modelroute_identity::RateLimiter;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// The platform (pool, identity, ledger, executor, billing) and its use cases.
    pub(crate) services: Services,
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
