//! `modelroute`: the server and the operator CLI. Thin by design: parse the
//! command line, load the settings, call the composition root
//! (`modelroute-app`) or, for `serve`, the HTTP adapter over it.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use modelroute_app::{Reloader, Services, Settings};
use modelroute_http::Application;
use modelroute_identity::{Actor, RestrictedBy, Scopes};
use modelroute_jobs::{JobFilter, JobStatus, Queue};
use modelroute_types::{JobId, Money, OrgId, ProjectId};

/// ModelRoute: one API to run any AI model, paid from a prepaid balance.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML config file (default: ./modelroute.toml when present).
    #[arg(long, short, global = true, env = "MODELROUTE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (the default set-up needs no configuration).
    Serve,
    /// Run the job queue's workers without an HTTP listener (PostgreSQL:
    /// scale them apart from the API replicas; set `[jobs] run_in_server =
    /// false` there). Stops on SIGTERM, finishing running jobs.
    Worker,
    /// The durable job queue.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Print the effective configuration, secrets redacted.
    Config,
    /// The catalogue as operators see it: each route's opaque id (what
    /// customers see in routing evidence), provider, upstream model and prices.
    Routes,
    /// Apply pending database migrations.
    Migrate,
    /// Organizations.
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Projects.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Credits (manual-credits mode).
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Ledger maintenance.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Retention (docs/PRIVACY.md): what each data class has past its
    /// period, and the sweep that deletes it (the `privacy.sweep` job runs
    /// the same every `[privacy] sweep_interval_secs`).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Aggregates that identify no one (docs/PRIVACY.md): executions, error
    /// rate, tokens and latency per model and day (UTC), a bucket printed
    /// only when at least `[privacy] analytics_min_orgs` orgs contributed.
    Analytics {
        /// The first day (inclusive), YYYY-MM-DD.
        #[arg(long)]
        from: chrono::NaiveDate,
        /// The day after the last (exclusive), YYYY-MM-DD; at most 93 days after `from`.
        #[arg(long)]
        to: chrono::NaiveDate,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The email outbox: what was sent, or (with no SMTP server configured)
    /// what waits there — verification, reset and invitation links.
    Outbox {
        /// The recipient.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum OrgsCommand {
    /// Create an organization (and its ledger accounts).
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// Restrict an organization's processing (a request to the privacy
    /// contact): its data is kept and exportable, every execution is
    /// refused with `restricted`; only the operator lifts it. Audited.
    Restrict {
        /// The org's id.
        org: String,
        /// Why (kept with the restriction, shown to the org).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift an organization's restriction (the operator's or its own). Audited.
    Unrestrict {
        /// The org's id.
        org: String,
    },
    /// Export everything an organization has (a request to the privacy
    /// contact) into a file: the archive of docs/PRIVACY.md. Audited.
    Export {
        /// The org's id.
        org: String,
        /// Where to write it (`-`: stdout).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectsCommand {
    /// Create a project in an organization.
    Create {
        /// The org id (`org_…`).
        #[arg(long)]
        org: OrgId,
        /// Its name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key; it is printed once and stored only as a MAC.
    Create {
        /// The project id (`proj_…`).
        #[arg(long)]
        project: ProjectId,
        /// A name to recognise it by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Space-separated scopes: execute, read, manage.
        #[arg(long, default_value = "execute read manage")]
        scopes: String,
    },
}

#[derive(Debug, Subcommand)]
enum CreditsCommand {
    /// Add credit to an organization's balance.
    Grant {
        /// The org id (`org_…`).
        #[arg(long)]
        org: OrgId,
        /// Dollars, e.g. `25` or `0.50`.
        #[arg(long)]
        amount: Money,
        /// Replaying the same key grants once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Correct an organization's balance: a signed amount with a reason
    /// (journaled against the platform's adjustments account; a debit
    /// cannot take the balance below zero).
    Adjust {
        /// The org id (`org_…`).
        #[arg(long)]
        org: OrgId,
        /// Dollars, signed: `5`, `-1.25`.
        #[arg(long, allow_hyphen_values = true)]
        amount: Money,
        /// Why (kept in the journal and the audit log).
        #[arg(long)]
        reason: String,
        /// Replaying the same key adjusts once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show an organization's balance.
    Balance {
        /// The org id (`org_…`).
        #[arg(long)]
        org: OrgId,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Jobs, newest first (succeeded jobs are not kept); and how many per kind and state.
    List {
        /// pending, running, dead or canceled.
        #[arg(long)]
        status: Option<String>,
        /// One kind only.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One job, whole.
    Show {
        /// The job id (`job_…`).
        id: JobId,
    },
    /// Make a dead or canceled job pending again, its attempts reset.
    Retry {
        /// The job id (`job_…`).
        id: JobId,
    },
    /// Cancel a pending or dead job.
    Cancel {
        /// The job id (`job_…`).
        id: JobId,
    },
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Per data class: its period, how many rows are due now, and its oldest row.
    Report,
    /// Delete what is due now, class by class, in batches, with progress.
    Sweep {
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this class (as the report names it).
        #[arg(long)]
        class: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Replay the journal and check every invariant; non-zero exit on a violation.
    Verify,
    /// Release holds past their timeout.
    Sweep,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    modelroute_telemetry::init_logging(&settings.telemetry);
    match cli.command {
        Command::Serve => serve(settings, cli.config).await,
        Command::Worker => {
            modelroute_app::run_worker(settings).await.context("running the workers")?;
            Ok(())
        }
        Command::Config => {
            print!("{}", settings.to_redacted_toml()?);
            Ok(())
        }
        Command::Routes => {
            let (catalogue, _) = modelroute_app::routes_of(&settings)?;
            println!(
                "{:<22} {:<28} {:<24} {:<16} {:<36} in/out USD per M tokens: customer (provider cost)",
                "public id", "model", "route", "provider", "upstream model"
            );
            for model in catalogue.models() {
                for r in &model.routes {
                    println!(
                        "{:<22} {:<28} {:<24} {:<16} {:<36} {}/{} ({}/{})",
                        r.public_id,
                        model.slug,
                        r.id,
                        r.provider,
                        r.upstream_model,
                        r.input_price.per_million().to_usd_string(),
                        r.output_price.per_million().to_usd_string(),
                        r.cost_input_price.per_million().to_usd_string(),
                        r.cost_output_price.per_million().to_usd_string()
                    );
                }
            }
            Ok(())
        }
        Command::Migrate => {
            let mut settings = settings;
            settings.database.migrate_on_start = true;
            Services::connect(&settings).await?;
            println!("database is migrated");
            Ok(())
        }
        other => operate(&settings, other).await,
    }
}

async fn serve(settings: Settings, config: Option<PathBuf>) -> Result<()> {
    match modelroute_http::raise_descriptor_limit() {
        Ok(limit) => tracing::info!(open_files = ?limit, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the descriptor limit"),
    }
    let app = Application::build(settings).await.context("starting the server")?;
    if let Some(b) = &app.bootstrap {
        println!("First start: created org {} and project {}.", b.org.id, b.project.id);
        println!("Starting balance: {} (manual-credits mode).", b.credit);
        println!("API key (shown once, store it now):\n\n    {}\n", b.token);
    }
    println!("ModelRoute listening on port {}", app.port());
    tokio::spawn(reload_on_sighup(app.reloader(), config));
    app.run_until_stopped().await.context("running the server")
}

/// SIGHUP: reload the catalogue and the providers from the same sources
/// (defaults, the config file, the environment). A bad file is reported and
/// the running catalogue kept.
async fn reload_on_sighup(reloader: Reloader, config: Option<PathBuf>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; catalogue reloads need a restart");
            return;
        };
        while hangups.recv().await.is_some() {
            match Settings::load(config.as_deref()).map_err(anyhow::Error::from).and_then(|s| Ok(reloader.reload(&s)?))
            {
                Ok(models) => tracing::info!(models, "reloaded the catalogue and providers"),
                Err(e) => tracing::error!(error = %e, "reload refused; the running catalogue stays"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (reloader, config);
}

async fn operate(settings: &Settings, command: Command) -> Result<()> {
    let services = Services::connect(settings).await?;
    match command {
        Command::Orgs(OrgsCommand::Create { name }) => {
            let (org, _) = services.create_org(&name, None, &Actor::operator()).await?;
            println!("{}", org.id);
        }
        Command::Orgs(OrgsCommand::Restrict { org, reason }) => {
            let org: OrgId = org.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let r =
                services.identity.restrict(&org, RestrictedBy::Operator, reason.as_deref(), &Actor::operator()).await?;
            println!("{org} restricted since {} by {}", modelroute_types::time::rfc3339(r.since), r.by.as_str());
        }
        Command::Orgs(OrgsCommand::Export { org, out }) => {
            let org: OrgId = org.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let archive = services.export_archive(&org).await?;
            services.identity.record(Some(&org), &Actor::operator(), "org.exported", Some(org.as_str()), None).await?;
            if out.as_os_str() == "-" {
                std::io::Write::write_all(&mut std::io::stdout(), &archive)?;
            } else {
                std::fs::write(&out, &archive).with_context(|| format!("writing {}", out.display()))?;
                println!("wrote {} bytes to {}", archive.len(), out.display());
            }
        }
        Command::Orgs(OrgsCommand::Unrestrict { org }) => {
            let org: OrgId = org.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            services.identity.lift_restriction(&org, RestrictedBy::Operator, &Actor::operator()).await?;
            println!("{org} is not restricted");
        }
        Command::Projects(ProjectsCommand::Create { org, name }) => {
            println!("{}", services.create_project(&org, &name, &Actor::operator()).await?.id);
        }
        Command::Keys(KeysCommand::Create { project, name, scopes }) => {
            let scopes: Scopes = scopes.parse()?;
            let (key, token) = services.create_key_in(&project, &name, &scopes).await?;
            eprintln_key(&key.id.to_string());
            println!("{token}");
        }
        Command::Credits(CreditsCommand::Grant { org, amount, idempotency_key }) => {
            let entry = services.grant(&org, amount, idempotency_key).await?;
            let balance = services.balance(&org).await?;
            println!("granted {amount} ({entry}); available {}", balance.available);
        }
        Command::Credits(CreditsCommand::Adjust { org, amount, reason, idempotency_key }) => {
            let entry = services.adjust(&org, amount, &reason, idempotency_key).await?;
            let balance = services.balance(&org).await?;
            println!("adjusted by {amount} ({entry}); available {}", balance.available);
        }
        Command::Credits(CreditsCommand::Balance { org }) => {
            let b = services.balance(&org).await?;
            println!("available {}  held {}", b.available, b.held);
        }
        Command::Ledger(LedgerCommand::Verify) => {
            let report = services.verify_ledger().await?;
            println!("checked {} entries over {} accounts", report.entries, report.accounts);
            if !report.violations.is_empty() {
                bail!("ledger invariants violated:\n  {}", report.violations.join("\n  "));
            }
            println!("ledger is sound");
        }
        Command::Outbox { to } => {
            for mail in services.identity.outbox(&to).await? {
                let state = mail.sent_at.map_or_else(|| "not sent".to_owned(), |t| format!("sent {t}"));
                println!("{} {} [{}] {}: {}\n{}", mail.id, mail.created_at, mail.kind, state, mail.subject, mail.body);
            }
        }
        Command::Ledger(LedgerCommand::Sweep) => {
            println!("released {} expired hold(s)", services.sweep_holds().await?);
        }
        Command::Jobs(command) => jobs(Queue::new(services.pool.clone()), command).await?,
        Command::Retention(command) => retention(&services, settings, command).await?,
        Command::Analytics { from, to, json } => {
            let report = services.executor.analytics(from, to, settings.privacy.analytics_min_orgs).await?;
            if json {
                for b in &report.buckets {
                    println!("{}", serde_json::to_string(b)?);
                }
            } else {
                println!(
                    "{:<10} {:<32} {:>10} {:>7} {:>12} {:>12} {:>8} {:>8} {:>8}",
                    "day", "model", "executions", "errors", "tokens in", "tokens out", "p50 ms", "p90 ms", "p99 ms"
                );
                for b in &report.buckets {
                    println!(
                        "{:<10} {:<32} {:>10} {:>6.1}% {:>12} {:>12} {:>8} {:>8} {:>8}",
                        b.day.to_string(),
                        b.model,
                        b.executions,
                        b.error_rate * 100.0,
                        b.input_tokens,
                        b.output_tokens,
                        b.latency_ms_p50,
                        b.latency_ms_p90,
                        b.latency_ms_p99
                    );
                }
            }
            eprintln_withheld(report.suppressed, report.k);
        }
        Command::Serve | Command::Worker | Command::Config | Command::Routes | Command::Migrate => {}
    }
    Ok(())
}

async fn retention(services: &Services, settings: &Settings, command: RetentionCommand) -> Result<()> {
    let retention = services.retention(&settings.privacy);
    let now = modelroute_types::time::now();
    let (only, dry_run) = match &command {
        RetentionCommand::Report => (None, true),
        RetentionCommand::Sweep { dry_run, class } => (class.as_deref(), *dry_run),
    };
    if dry_run {
        println!("{:<20} {:>6} {:>10}  {:<26} oldest row", "class", "kept", "due", "from");
        for r in retention.report(now, only).await? {
            let oldest = r.oldest.map_or_else(|| "-".to_owned(), modelroute_types::time::rfc3339);
            println!("{:<20} {:>6} {:>10}  {:<26} {oldest}", r.class, period(r.period_secs), r.due, r.kept);
        }
        if matches!(command, RetentionCommand::Sweep { .. }) {
            println!("dry run: nothing deleted");
        }
        return Ok(());
    }
    let mut bar = Progress::default();
    let swept = retention.sweep(now, only, &mut |s| bar.show(s)).await;
    bar.finish();
    for s in swept? {
        println!("{:<20} deleted {} of {} due", s.class, s.deleted, s.due);
    }
    Ok(())
}

/// A retention period as operators write it: whole days as `7d`, else hours.
fn period(secs: u64) -> String {
    const DAY: u64 = 86_400;
    if secs >= DAY && secs.is_multiple_of(DAY) { format!("{}d", secs / DAY) } else { format!("{}h", secs / 3_600) }
}

/// A progress bar on stderr, a line per class of a sweep, redrawn as each
/// batch lands.
#[derive(Default)]
struct Progress {
    class: Option<&'static str>,
}

#[allow(clippy::print_stderr)]
impl Progress {
    fn show(&mut self, s: &modelroute_privacy::Swept) {
        const WIDTH: u64 = 30;
        if self.class.is_some_and(|c| c != s.class) {
            eprintln!();
        }
        self.class = Some(s.class);
        let filled = (s.deleted.min(s.due) * WIDTH).checked_div(s.due).unwrap_or(WIDTH);
        let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
        eprint!("\r{:<20} [{bar}] {}/{}", s.class, s.deleted, s.due);
    }

    fn finish(&self) {
        if self.class.is_some() {
            eprintln!();
        }
    }
}

async fn jobs(queue: Queue, command: JobsCommand) -> Result<()> {
    match command {
        JobsCommand::List { status, kind, limit } => {
            let status = status
                .map(|s| {
                    JobStatus::try_from(s.as_str())
                        .map_err(|_| anyhow::anyhow!("no job status `{s}`: pending, running, dead or canceled"))
                })
                .transpose()?;
            for s in queue.stats().await? {
                let oldest = s.oldest.map(|t| format!(", oldest enqueued {t}")).unwrap_or_default();
                println!("{:<28} {:<9} {}{oldest}", s.kind, s.status.as_str(), s.count);
            }
            println!();
            for j in queue.list(&JobFilter { status, kind, limit: Some(limit) }).await? {
                let error = j.last_error.map(|e| format!("  last error: {e}")).unwrap_or_default();
                println!(
                    "{} {:<28} {:<9} attempt {}/{} run at {}{error}",
                    j.id,
                    j.kind,
                    j.status.as_str(),
                    j.attempts,
                    j.max_attempts,
                    j.run_at
                );
            }
        }
        JobsCommand::Show { id } => println!("{}", serde_json::to_string_pretty(&queue.get(&id).await?)?),
        JobsCommand::Retry { id } => {
            queue.retry(&id).await?;
            println!("{id} is pending again");
        }
        JobsCommand::Cancel { id } => {
            queue.cancel(&id).await?;
            println!("{id} is canceled");
        }
    }
    Ok(())
}

/// What analytics withheld goes to stderr, so stdout is just the buckets.
#[allow(clippy::print_stderr)]
fn eprintln_withheld(buckets: u64, k: u32) {
    eprintln!("{buckets} bucket(s) withheld: fewer than {k} orgs contributed");
}

/// The key's record id goes to stderr so stdout is just the token (scriptable).
#[allow(clippy::print_stderr)]
fn eprintln_key(id: &str) {
    eprintln!("created API key {id}; the token below is shown once:");
}
