//! Building and running the server: the platform from the composition
//! root (`modelroute_app`), an actix server in front of it.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use modelroute_app::{AppError, Background, BootstrapReport, Reloader, Services, Settings};
use modelroute_identity::RateLimiter;

use crate::state::AppState;
use crate::{request_id, routes};

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A domain service could not start.
    #[error(transparent)]
    Services(#[from] AppError),
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
    background: Option<Background>,
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
        let state = Arc::new(AppState {
            services: services.clone(),
            metrics: modelroute_telemetry::metrics_handle(),
            limiter: Arc::new(RateLimiter::from_config(&settings.identity.rate_limits).map_err(AppError::RateLimits)?),
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
        let background =
            if settings.jobs.run_in_server { Some(Background::start(&services, &settings, "serve")?) } else { None };
        Ok(Self { port, server, background, bootstrap, services })
    }

    /// A handle that swaps in a new catalogue and providers while serving.
    #[must_use]
    pub fn reloader(&self) -> Reloader {
        Reloader::new(self.services.clone())
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
        if let Some(background) = self.background {
            background.shutdown().await;
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
