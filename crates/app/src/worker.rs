//! Running the background: the job queue's workers with every handler and
//! periodic job, inside `modelroute serve` or as `modelroute worker`.

use std::time::Duration;

use modelroute_jobs::Workers;

use crate::{AppError, Services, Settings, background};

/// The running background: the queue's workers and (with SMTP) the task
/// that turns queued emails into delivery jobs.
#[allow(missing_debug_implementations)]
pub struct Background {
    workers: Workers,
    mail_bridge: Option<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts the workers for `role` (`serve`, `worker`: part of each
    /// worker's name in the jobs table).
    ///
    /// # Errors
    /// An invalid periodic job (a bad interval).
    pub fn start(services: &Services, settings: &Settings, role: &str) -> Result<Self, AppError> {
        let queue = services.queue.clone();
        let mail = services.identity.sends_email();
        let lease = Duration::from_secs(settings.ledger.hold_timeout_secs);
        let registry = background::registry(services, lease);
        let mut config = settings.jobs.worker(&format!("{role}-{}", std::process::id()));
        config.periodics = background::periodics(settings, mail)?;
        let mail_bridge =
            mail.then(|| tokio::spawn(background::deliver_mail_when_queued(services.identity.clone(), queue.clone())));
        Ok(Self { workers: Workers::start(queue, registry, config), mail_bridge })
    }

    /// Stops taking jobs, gives running ones `[jobs] shutdown_timeout_secs`
    /// and hands the rest back.
    pub async fn shutdown(self) {
        if let Some(bridge) = self.mail_bridge {
            bridge.abort();
        }
        self.workers.shutdown().await;
    }
}

/// `modelroute worker`: the job queue's workers without an HTTP listener
/// (PostgreSQL: scaled apart from the API replicas), until SIGTERM or
/// Ctrl-C; then running jobs get `[jobs] shutdown_timeout_secs` and the
/// rest are handed back.
///
/// # Errors
/// A start-up step failing.
pub async fn run_worker(settings: Settings) -> Result<(), AppError> {
    let services = Services::connect(&settings).await?;
    let background = Background::start(&services, &settings, "worker")?;
    tracing::info!(queues = ?settings.jobs.queues, "worker running");
    shutdown_signal().await;
    tracing::info!("stopping: finishing running jobs");
    background.shutdown().await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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

/// Reloads the catalogue and the providers of a running platform (the
/// binary calls it on SIGHUP). Other settings need a restart.
#[derive(Debug, Clone)]
pub struct Reloader {
    services: Services,
}

impl Reloader {
    /// A reloader of `services`' executor.
    #[must_use]
    pub const fn new(services: Services) -> Self {
        Self { services }
    }

    /// Validates `settings`' catalogue and providers and, when both are
    /// valid, swaps them in; returns the number of models. Requests under
    /// way finish on the routes they were admitted with.
    ///
    /// # Errors
    /// An invalid entry, named in the message; the running catalogue stays.
    pub fn reload(&self, settings: &Settings) -> Result<usize, AppError> {
        let (catalogue, providers) = crate::routes_of(settings)?;
        let models = catalogue.models().count();
        self.services.executor.reload(catalogue, providers);
        Ok(models)
    }
}
