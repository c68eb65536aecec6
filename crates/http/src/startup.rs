//! Building and running the server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use modelroute_billing::Billing;
use modelroute_executions::Executor;
use modelroute_identity::RateLimiter;
use modelroute_jobs::{Queue, Workers};
use modelroute_ledger::SqlLedger;
use modelroute_routing::{ErrorRules, Health};

use crate::operator::{OperatorError, routes_of};
use crate::state::AppState;
use crate::{BootstrapReport, Services, Settings, background, request_id, routes};

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A domain service could not start.
    #[error(transparent)]
    Services(#[from] OperatorError),
    /// The listener could not bind.
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        /// The address.
        bind: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A built server, bound and ready to run.
#[allow(missing_debug_implementations)]
pub struct Application {
    port: u16,
    server: Server,
    /// The job queue's workers (unless `[jobs] run_in_server` is off).
    workers: Option<Workers>,
    /// Turns queued emails into delivery jobs.
    mail_bridge: Option<tokio::task::JoinHandle<()>>,
    executor: Executor<SqlLedger>,
    /// Set when this start bootstrapped an empty database.
    pub bootstrap: Option<BootstrapReport>,
    /// The services, for callers that need them alongside the server (tests).
    pub services: Services,
}

impl Application {
    /// Connects, migrates, bootstraps an empty database, binds the listener
    /// (`server.bind`; port 0 picks a free port) and builds the server.
    ///
    /// # Errors
    /// Any start-up step failing.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let services = Services::connect(&settings).await?;
        let bootstrap = services.bootstrap(&settings).await?;
        let (executor, billing) = domain(&services, &settings)?;
        let state = Arc::new(AppState {
            pool: services.pool.clone(),
            identity: services.identity.clone(),
            ledger: services.ledger.clone(),
            billing: billing.clone(),
            executor: executor.clone(),
            metrics: modelroute_telemetry::metrics_handle(),
            limiter: Arc::new(
                RateLimiter::from_config(&settings.identity.rate_limits).map_err(OperatorError::RateLimits)?,
            ),
            per_key_per_minute: settings.identity.rate_limits.per_key_per_minute,
            per_org_per_minute: settings.identity.rate_limits.per_org_per_minute,
            per_ip_auth_per_minute: settings.identity.rate_limits.per_ip_auth_per_minute,
            public_origin: crate::session::origin_of(&settings.identity.public_url),
            operator_token: settings.server.operator_token.clone().filter(|t| !t.expose().is_empty()),
            body: crate::body::BodyPolicy {
                max_bytes: settings.server.max_body_bytes,
                grace: Duration::from_millis(settings.server.body_grace_ms),
                min_bytes_per_sec: settings.server.body_min_bytes_per_sec,
                pending: Arc::new(tokio::sync::Semaphore::new(settings.server.max_pending_bodies.max(1))),
            },
        });
        let bind = settings.server.bind.clone();
        let listener = TcpListener::bind(&bind).map_err(|source| StartupError::Bind { bind: bind.clone(), source })?;
        let port = listener.local_addr().map_err(|source| StartupError::Bind { bind: bind.clone(), source })?.port();
        let cfg = &settings.server;
        let data = web::Data::new(state);
        let mut server = HttpServer::new(move || {
            App::new().app_data(data.clone()).wrap(from_fn(request_id::middleware)).configure(routes::configure)
        })
        // Streamed answers go out chunk by chunk: without TCP_NODELAY each
        // small SSE frame can wait ~40 ms for the client's delayed ACK.
        .tcp_nodelay(true)
        .client_request_timeout(Duration::from_millis(cfg.client_request_timeout_ms))
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(Duration::from_secs(cfg.keep_alive_secs))
        .shutdown_timeout(cfg.shutdown_timeout_secs);
        let workers =
            if cfg.workers > 0 { cfg.workers } else { std::thread::available_parallelism().map_or(1, usize::from) };
        let max_connections = connection_cap(cfg.max_connections);
        // actix counts connections per worker.
        server = server.workers(workers).max_connections(max_connections.div_ceil(workers).max(1));
        tracing::debug!(workers, max_connections, "connection limits");
        let server = server.listen(listener).map_err(|source| StartupError::Bind { bind, source })?.run();
        let (workers, mail_bridge) = if settings.jobs.run_in_server {
            let (workers, bridge) = start_workers(&services, &settings, &executor, &billing, "serve")?;
            (Some(workers), bridge)
        } else {
            (None, None)
        };
        Ok(Self { port, server, workers, mail_bridge, executor, bootstrap, services })
    }

    /// A handle that swaps in a new catalogue and providers while serving.
    #[must_use]
    pub fn reloader(&self) -> Reloader {
        Reloader { executor: self.executor.clone() }
    }

    /// The port the server listens on.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT, then drains in-flight requests.
    ///
    /// # Errors
    /// The server failing.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        if let Some(bridge) = self.mail_bridge {
            bridge.abort();
        }
        if let Some(workers) = self.workers {
            workers.shutdown().await;
        }
        result
    }
}

/// The most client connections to hold open at once: the configured number,
/// or (0) half the process's descriptor limit less 256 — each connection
/// may hold an upstream connection too, and the database and files need
/// some — and at least 64.
fn connection_cap(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let limit = descriptor_limit().unwrap_or(1024);
    (usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(256) / 2).max(64)
}

/// The process's soft limit on open descriptors, if it has one.
fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the process's soft limit on open descriptors to its hard limit
/// (as Go's runtime and many servers do): a default of 1,024 is a few
/// hundred slow clients. Answers the limit now in force.
///
/// # Errors
/// The system refused.
pub fn raise_descriptor_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Linux caps descriptors at `fs.nr_open` (2^20 by default) whatever the hard limit says.
    const CEILING: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.unwrap_or(CEILING).min(CEILING);
    if limit.current.is_some_and(|now| now < wanted) {
        setrlimit(Resource::Nofile, Rlimit { current: Some(wanted), maximum: limit.maximum })?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// The executor and billing over `services`, as `settings` configure them.
fn domain(services: &Services, settings: &Settings) -> Result<(Executor<SqlLedger>, Billing), OperatorError> {
    let executor = Executor::new(
        services.pool.clone(),
        services.ledger.clone(),
        Arc::clone(&services.catalogue),
        Arc::clone(&services.providers),
        Arc::new(Health::new(settings.routing.breaker.clone())),
        Arc::new(ErrorRules::new(settings.routing.error_rules.clone())),
        settings.routing.retry.clone(),
    )
    .with_hold_lease(Duration::from_secs(settings.ledger.hold_timeout_secs));
    let notifier = Arc::new(crate::notify::EmailNotifier::new(services.identity.clone()));
    let billing = Billing::new(services.pool.clone(), services.ledger.clone(), settings.billing.clone(), notifier)
        .map_err(OperatorError::Billing)?;
    Ok((executor, billing))
}

/// Starts the job queue's workers with every handler and periodic job, and
/// (with SMTP) the task that turns queued emails into delivery jobs.
fn start_workers(
    services: &Services,
    settings: &Settings,
    executor: &Executor<SqlLedger>,
    billing: &Billing,
    role: &str,
) -> Result<(Workers, Option<tokio::task::JoinHandle<()>>), OperatorError> {
    let queue = Queue::new(services.pool.clone());
    let mail = services.identity.sends_email();
    let lease = Duration::from_secs(settings.ledger.hold_timeout_secs);
    let registry = background::registry(&services.ledger, executor, billing, &services.identity, lease);
    let mut config = settings.jobs.worker(&format!("{role}-{}", std::process::id()));
    config.periodics = background::periodics(settings, mail)?;
    let bridge =
        mail.then(|| tokio::spawn(background::deliver_mail_when_queued(services.identity.clone(), queue.clone())));
    Ok((Workers::start(queue, registry, config), bridge))
}

/// `modelroute worker`: the job queue's workers without an HTTP listener
/// (PostgreSQL: scaled apart from the API replicas), until SIGTERM or
/// Ctrl-C; then running jobs get `[jobs] shutdown_timeout_secs` and the
/// rest are handed back.
///
/// # Errors
/// A start-up step failing.
pub async fn run_worker(settings: Settings) -> Result<(), StartupError> {
    let services = Services::connect(&settings).await?;
    let (executor, billing) = domain(&services, &settings)?;
    let (workers, bridge) = start_workers(&services, &settings, &executor, &billing, "worker")?;
    tracing::info!(queues = ?settings.jobs.queues, "worker running");
    shutdown_signal().await;
    tracing::info!("stopping: finishing running jobs");
    if let Some(b) = bridge {
        b.abort();
    }
    workers.shutdown().await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Reloads the catalogue and the providers of a running server (the binary
/// calls it on SIGHUP). Other settings need a restart.
#[derive(Debug, Clone)]
pub struct Reloader {
    executor: Executor<SqlLedger>,
}

impl Reloader {
    /// Validates `settings`' catalogue and providers and, when both are
    /// valid, swaps them in; returns the number of models. Requests under
    /// way finish on the routes they were admitted with.
    ///
    /// # Errors
    /// An invalid entry, named in the message; the running catalogue stays.
    pub fn reload(&self, settings: &Settings) -> Result<usize, OperatorError> {
        let (catalogue, providers) = routes_of(settings)?;
        let models = catalogue.models().count();
        self.executor.reload(catalogue, providers);
        Ok(models)
    }
}
