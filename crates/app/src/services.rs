//! The domain services wired together, and the use cases that span crates:
//! the one place an org is created (with its owner, default project, ledger
//! accounts and audit event), a key is issued, credit is granted, and an
//! empty database is bootstrapped. The HTTP handlers and the CLI both call
//! these.

use std::sync::Arc;
use std::time::Duration;

use modelroute_billing::Billing;
use modelroute_db::DbPool;
use modelroute_executions::Executor;
use modelroute_files::{FileError, Files};
use modelroute_identity::{Actor, ApiKey, Identity, Org, Project, Scopes, ServerSecret};
use modelroute_jobs::Queue;
use modelroute_ledger::{Balance, CreditSource, Ledger as _, SqlLedger, VerifyReport};
use modelroute_providers::{ChatRequest, Part, ProviderRegistry};
use modelroute_routing::{Catalogue, ErrorRules, Health};
use modelroute_types::{EntryId, FileId, Money, OrgId, ProjectId, UserId, WebhookDeliveryId, time};
use modelroute_webhooks::Webhooks;

use crate::{AppError, Settings};

/// The platform: every domain service, connected and wired together.
#[derive(Debug, Clone)]
pub struct Services {
    /// The database pool.
    pub pool: DbPool,
    /// Identity.
    pub identity: Identity,
    /// The ledger.
    pub ledger: SqlLedger,
    /// The executor: admission, routing, the attempt loop, settlement.
    pub executor: Executor<SqlLedger>,
    /// Stripe top-ups, auto top-up and balance alerts.
    pub billing: Billing,
    /// Uploaded files and re-hosted outputs.
    pub files: Files,
    /// Webhook endpoints and deliveries.
    pub webhooks: Webhooks,
    /// The job queue (its in-process enqueues wake this process's workers).
    pub queue: Queue,
    /// The catalogue validated at start (a reload swaps the executor's).
    pub catalogue: Arc<Catalogue>,
    /// The providers of that catalogue.
    pub providers: Arc<ProviderRegistry>,
    /// Whether this start generated the server secret.
    pub generated_secret: bool,
    /// `[executions]`: asynchronous executions' limits.
    pub executions_config: modelroute_executions::ExecutionsConfig,
    /// `[privacy]`: the retention schedule.
    pub privacy_config: modelroute_privacy::PrivacyConfig,
}

/// What first start on an empty database created.
#[derive(Debug, Clone)]
pub struct BootstrapReport {
    /// The default org.
    pub org: Org,
    /// Its project.
    pub project: Project,
    /// The API key's record.
    pub key: ApiKey,
    /// The API key itself: printed once, stored nowhere.
    pub token: String,
    /// The granted starting balance.
    pub credit: Money,
}

/// A key to issue.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    /// The org the caller acts in; the project must be one of its.
    pub org: &'a OrgId,
    /// The project.
    pub project: &'a ProjectId,
    /// Its display name.
    pub name: &'a str,
    /// What it may do.
    pub scopes: &'a Scopes,
    /// When it stops working, if ever.
    pub expires_at: Option<chrono::NaiveDateTime>,
}

/// The validated catalogue and the providers its routes name.
///
/// # Errors
/// A provider or catalogue entry that is invalid, named in the message.
pub fn routes_of(settings: &Settings) -> Result<(Arc<Catalogue>, Arc<ProviderRegistry>), AppError> {
    let providers = Arc::new(ProviderRegistry::from_config(&settings.providers).map_err(AppError::Providers)?);
    let catalogue = Arc::new(Catalogue::from_config(&settings.catalogue, |p| providers.contains(p))?);
    Ok((catalogue, providers))
}

impl Services {
    /// Connects, migrates (when configured), loads the server secret,
    /// validates the catalogue, and wires the executor and billing.
    ///
    /// # Errors
    /// Any of those failing.
    pub async fn connect(settings: &Settings) -> Result<Self, AppError> {
        let (catalogue, providers) = routes_of(settings)?;
        let pool = DbPool::connect(&settings.database).await?;
        if settings.database.migrate_on_start {
            let applied = pool.migrate().await?;
            if !applied.is_empty() {
                tracing::info!(?applied, "applied migrations");
            }
        }
        let (secret, generated_secret) = ServerSecret::load_or_generate(&settings.identity)?;
        if generated_secret {
            tracing::info!(path = %settings.identity.server_secret_file.display(), "generated a server secret");
        }
        let files = Files::new(
            pool.clone(),
            settings.files.clone(),
            &secret.derive("file-links"),
            &settings.identity.public_url,
        )?;
        let policy = modelroute_webhooks::outbound::Policy {
            allow_loopback: settings.webhooks.allow_loopback.unwrap_or(false),
            allow_private: settings.webhooks.allow_private_addresses,
        };
        if policy.allow_loopback {
            tracing::info!(
                "webhook endpoints may be loopback receivers over http (the embedded default); set [webhooks] allow_loopback = false in production"
            );
        }
        let webhooks =
            Webhooks::new(pool.clone(), settings.webhooks.clone(), &secret.derive("webhook-secrets"), policy)?;
        let identity = Identity::new(pool.clone(), secret).with_config(&settings.identity)?;
        let ledger = SqlLedger::open(pool.clone(), settings.ledger.clone()).await?;
        let executor = Executor::new(
            pool.clone(),
            ledger.clone(),
            Arc::clone(&catalogue),
            Arc::clone(&providers),
            Arc::new(Health::new(settings.routing.breaker.clone())),
            Arc::new(ErrorRules::new(settings.routing.error_rules.clone())),
            settings.routing.retry.clone(),
        )
        .with_hold_lease(Duration::from_secs(settings.ledger.hold_timeout_secs));
        let queue = Queue::new(pool.clone());
        let notifier = Arc::new(crate::notify::EmailNotifier::new(identity.clone(), webhooks.clone(), queue.clone()));
        let billing = Billing::new(pool.clone(), ledger.clone(), settings.billing.clone(), notifier)
            .map_err(AppError::Billing)?;
        let services = Self {
            pool,
            identity,
            ledger,
            executor,
            billing,
            files,
            webhooks,
            queue,
            catalogue,
            providers,
            generated_secret,
            executions_config: settings.executions.clone(),
            privacy_config: settings.privacy.clone(),
        };
        let callback_base = settings.executions.callback_url.as_deref().unwrap_or(&settings.identity.public_url);
        services.hook_async(callback_base);
        Ok(services)
    }

    /// Creates an org — with `owner` as its owner when a person creates it,
    /// and its `default` project, in one transaction — opens its ledger
    /// accounts and records `org.created` by `actor`.
    ///
    /// # Errors
    /// An invalid name, or a database failure.
    pub async fn create_org(
        &self,
        name: &str,
        owner: Option<&UserId>,
        actor: &Actor,
    ) -> Result<(Org, Project), AppError> {
        let (org, project) = self.identity.create_org_for(owner, name).await?;
        // Idempotent; the accounts reference the org, so they follow it.
        self.ledger.open_org_accounts(&org.id).await?;
        let details = serde_json::json!({ "name": org.name, "project": project.id });
        self.audit(&org.id, actor, "org.created", org.id.as_str(), details).await;
        Ok((org, project))
    }

    /// Creates a project in `org` and records `project.created`.
    ///
    /// # Errors
    /// Unknown org, invalid name, or a database failure.
    pub async fn create_project(&self, org: &OrgId, name: &str, actor: &Actor) -> Result<Project, AppError> {
        let project = self.identity.create_project(org, name).await?;
        let details = serde_json::json!({ "name": project.name });
        self.audit(org, actor, "project.created", project.id.as_str(), details).await;
        Ok(project)
    }

    /// Issues an API key in a project of `key.org` and records
    /// `api_key.created`; the returned token is shown once.
    ///
    /// # Errors
    /// A project of another org (not found), invalid input, or a database failure.
    pub async fn create_key(&self, key: &NewKey<'_>, actor: &Actor) -> Result<(ApiKey, String), AppError> {
        let (record, token) =
            self.identity.create_api_key(key.org, key.project, key.name, key.scopes, key.expires_at).await?;
        let details =
            serde_json::json!({ "name": record.name, "prefix": record.prefix, "scopes": record.scopes.to_string() });
        self.audit(key.org, actor, "api_key.created", record.id.as_str(), details).await;
        Ok((record, token))
    }

    /// The operator's key: in whichever org owns `project`.
    ///
    /// # Errors
    /// Unknown project, invalid input, or a database failure.
    pub async fn create_key_in(
        &self,
        project: &ProjectId,
        name: &str,
        scopes: &Scopes,
    ) -> Result<(ApiKey, String), AppError> {
        let org = self.identity.project(project).await?.org_id;
        let key = NewKey { org: &org, project, name, scopes, expires_at: None };
        self.create_key(&key, &Actor::operator()).await
    }

    /// Records an audit event after the write it describes committed; a
    /// failure is logged, not returned (the write stands either way).
    async fn audit(&self, org: &OrgId, actor: &Actor, action: &str, target: &str, details: serde_json::Value) {
        if let Err(e) = self.identity.record(Some(org), actor, action, Some(target), Some(details)).await {
            tracing::warn!(error = %e, action, "recording an audit event failed");
        }
    }

    /// Grants credit to an org (manual-credits mode).
    ///
    /// # Errors
    /// Unknown org, non-positive amount, or a database failure.
    pub async fn grant(
        &self,
        org: &OrgId,
        amount: Money,
        idempotency_key: Option<String>,
    ) -> Result<EntryId, AppError> {
        self.identity.org(org).await?;
        let entry = self.ledger.credit(org, amount, CreditSource::Grant, idempotency_key).await?;
        let details = serde_json::json!({ "nano_usd": amount.units(), "entry": entry });
        self.identity
            .record(Some(org), &Actor::operator(), "credits.granted", Some(entry.as_str()), Some(details))
            .await?;
        Ok(entry)
    }

    /// An operator's correction of an org's balance (signed), with a reason.
    ///
    /// # Errors
    /// Unknown org, zero amount, no reason, a debit beyond the available
    /// balance, or a database failure.
    pub async fn adjust(
        &self,
        org: &OrgId,
        amount: Money,
        reason: &str,
        idempotency_key: Option<String>,
    ) -> Result<EntryId, AppError> {
        self.identity.org(org).await?;
        let entry = self.ledger.adjust(org, amount, reason, idempotency_key).await?;
        let details = serde_json::json!({ "nano_usd": amount.units(), "entry": entry, "reason": reason.trim() });
        self.identity
            .record(Some(org), &Actor::operator(), "credits.adjusted", Some(entry.as_str()), Some(details))
            .await?;
        Ok(entry)
    }

    /// An org's balance.
    ///
    /// # Errors
    /// Unknown org or a database failure.
    pub async fn balance(&self, org: &OrgId) -> Result<Balance, AppError> {
        self.identity.org(org).await?;
        Ok(self.ledger.balance(org).await?)
    }

    /// Records an event of `org` for its webhook endpoints and queues the
    /// deliveries at once. A failure is logged, not returned: what caused
    /// the event stands either way.
    pub async fn emit_event(&self, org: &OrgId, event_type: &str, data: &serde_json::Value) {
        crate::background::emit_event(&self.webhooks, &self.queue, org, event_type, data).await;
    }

    /// Queues an attempt of a webhook delivery now.
    pub async fn queue_delivery(&self, id: &WebhookDeliveryId) {
        crate::background::queue_delivery(&self.queue, id).await;
    }

    /// Replaces every image part of `request` that names an uploaded file
    /// (`file_…`) of `org` by the file's content as a `data:` URL, so the
    /// provider receives the image itself and never a storage key or a
    /// link of the platform's.
    ///
    /// # Errors
    /// A file id that is malformed, not the org's, not an image, or larger
    /// than `[files] max_inline_bytes`; the store failing.
    pub async fn inline_files(&self, org: &OrgId, request: &mut ChatRequest) -> Result<(), AppError> {
        use base64::Engine as _;
        for (i, message) in request.messages.iter_mut().enumerate() {
            for (j, part) in message.content.iter_mut().enumerate() {
                let Part::Image { url } = part else { continue };
                if !url.starts_with(FileId::PREFIX) {
                    continue;
                }
                let invalid = |message: String| FileError::InvalidInput { field: "messages", message };
                let id: FileId = url
                    .parse()
                    .map_err(|e: modelroute_types::IdError| invalid(format!("messages[{i}].content[{j}]: {e}")))?;
                let (file, bytes) = self.files.read_inline(org, &id).await?;
                if !file.content_type.starts_with("image/") {
                    return Err(invalid(format!(
                        "messages[{i}].content[{j}]: {id} is {}, not an image",
                        file.content_type
                    ))
                    .into());
                }
                let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
                *url = format!("data:{};base64,{encoded}", file.content_type);
            }
        }
        Ok(())
    }

    /// Replays the journal and checks the ledger's invariants.
    ///
    /// # Errors
    /// A database failure.
    pub async fn verify_ledger(&self) -> Result<VerifyReport, AppError> {
        Ok(self.ledger.verify().await?)
    }

    /// Releases expired holds.
    ///
    /// # Errors
    /// A database failure.
    pub async fn sweep_holds(&self) -> Result<usize, AppError> {
        Ok(self.ledger.sweep_expired(time::now()).await?)
    }

    /// On an empty database: a default org, project and key, and the
    /// starting credit. Does nothing (returns `None`) otherwise.
    ///
    /// # Errors
    /// A database failure.
    pub async fn bootstrap(&self, settings: &Settings) -> Result<Option<BootstrapReport>, AppError> {
        if !settings.bootstrap.enabled || self.identity.org_count().await? > 0 {
            return Ok(None);
        }
        let (org, project) = self.create_org(&settings.bootstrap.org_name, None, &Actor::operator()).await?;
        let (key, token) = self.create_key_in(&project.id, "bootstrap", &Scopes::all()).await?;
        let credit = settings.bootstrap.starting_credit;
        if credit.is_positive() {
            self.grant(&org.id, credit, Some(format!("bootstrap:{}", org.id))).await?;
        }
        Ok(Some(BootstrapReport { org, project, key, token, credit }))
    }
}
