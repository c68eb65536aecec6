//! Operator actions shared by the server's start-up and the CLI
//! (`modelroute orgs create`, `keys create`, `credits grant`, ...), so the
//! binary stays a thin dispatcher.

use std::sync::Arc;

use modelroute_db::{DbError, DbPool};
use modelroute_identity::{Actor, ApiKey, Identity, IdentityError, Org, Project, Scopes, ServerSecret};
use modelroute_ledger::{Balance, CreditSource, Ledger as _, LedgerError, SqlLedger, VerifyReport};
use modelroute_providers::ProviderRegistry;
use modelroute_routing::{Catalogue, RoutingError};
use modelroute_types::{EntryId, Money, OrgId, ProjectId, time};

use crate::Settings;

/// A failure of an operator action or of start-up.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// Data layer.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Billing could not be set up.
    #[error(transparent)]
    Billing(modelroute_billing::BillingError),
    /// Ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Catalogue.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// Provider settings.
    #[error("invalid provider configuration: {0}")]
    Providers(String),
    /// Rate-limit settings.
    #[error("invalid rate-limit configuration: {0}")]
    RateLimits(String),
    /// The job queue.
    #[error(transparent)]
    Jobs(#[from] modelroute_jobs::JobError),
}

/// The domain services, connected and ready.
#[derive(Debug, Clone)]
pub struct Services {
    /// The database pool.
    pub pool: DbPool,
    /// Identity.
    pub identity: Identity,
    /// The ledger.
    pub ledger: SqlLedger,
    /// The validated catalogue.
    pub catalogue: Arc<Catalogue>,
    /// The providers.
    pub providers: Arc<ProviderRegistry>,
    /// Whether this start generated the server secret.
    pub generated_secret: bool,
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

/// The validated catalogue and the providers its routes name.
///
/// # Errors
/// A provider or catalogue entry that is invalid, named in the message.
pub fn routes_of(settings: &Settings) -> Result<(Arc<Catalogue>, Arc<ProviderRegistry>), OperatorError> {
    let providers = Arc::new(ProviderRegistry::from_config(&settings.providers).map_err(OperatorError::Providers)?);
    let catalogue = Arc::new(Catalogue::from_config(&settings.catalogue, |p| providers.contains(p))?);
    Ok((catalogue, providers))
}

impl Services {
    /// Connects, migrates (when configured), loads the server secret and
    /// validates the catalogue.
    ///
    /// # Errors
    /// Any of those failing.
    pub async fn connect(settings: &Settings) -> Result<Self, OperatorError> {
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
        let identity = Identity::new(pool.clone(), secret).with_config(&settings.identity)?;
        let ledger = SqlLedger::open(pool.clone(), settings.ledger.clone()).await?;
        Ok(Self { pool, identity, ledger, catalogue, providers, generated_secret })
    }

    /// Creates an org and opens its ledger accounts.
    ///
    /// # Errors
    /// Invalid name or a database failure.
    pub async fn create_org(&self, name: &str) -> Result<Org, OperatorError> {
        let org = self.identity.create_org(name).await?;
        self.ledger.open_org_accounts(&org.id).await?;
        let details = serde_json::json!({ "name": org.name });
        self.identity
            .record(Some(&org.id), &Actor::operator(), "org.created", Some(org.id.as_str()), Some(details))
            .await?;
        Ok(org)
    }

    /// Creates a project.
    ///
    /// # Errors
    /// Unknown org, invalid name, or a database failure.
    pub async fn create_project(&self, org: &OrgId, name: &str) -> Result<Project, OperatorError> {
        let project = self.identity.create_project(org, name).await?;
        let details = serde_json::json!({ "name": project.name });
        self.identity
            .record(Some(org), &Actor::operator(), "project.created", Some(project.id.as_str()), Some(details))
            .await?;
        Ok(project)
    }

    /// Creates an API key; the returned token is shown once.
    ///
    /// # Errors
    /// Unknown project, invalid input, or a database failure.
    pub async fn create_key(
        &self,
        project: &ProjectId,
        name: &str,
        scopes: &Scopes,
    ) -> Result<(ApiKey, String), OperatorError> {
        // The operator acts across orgs: the key goes to the project's own org.
        let org = self.identity.project(project).await?.org_id;
        let (key, token) = self.identity.create_api_key(&org, project, name, scopes, None).await?;
        let details = serde_json::json!({ "name": key.name, "prefix": key.prefix, "scopes": key.scopes.to_string() });
        self.identity
            .record(Some(&key.org_id), &Actor::operator(), "api_key.created", Some(key.id.as_str()), Some(details))
            .await?;
        Ok((key, token))
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
    ) -> Result<EntryId, OperatorError> {
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
    ) -> Result<EntryId, OperatorError> {
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
    pub async fn balance(&self, org: &OrgId) -> Result<Balance, OperatorError> {
        self.identity.org(org).await?;
        Ok(self.ledger.balance(org).await?)
    }

    /// Replays the journal and checks the ledger's invariants.
    ///
    /// # Errors
    /// A database failure.
    pub async fn verify_ledger(&self) -> Result<VerifyReport, OperatorError> {
        Ok(self.ledger.verify().await?)
    }

    /// Releases expired holds.
    ///
    /// # Errors
    /// A database failure.
    pub async fn sweep_holds(&self) -> Result<usize, OperatorError> {
        Ok(self.ledger.sweep_expired(time::now()).await?)
    }

    /// On an empty database: a default org, project and key, and the
    /// starting credit. Does nothing (returns `None`) otherwise.
    ///
    /// # Errors
    /// A database failure.
    pub async fn bootstrap(&self, settings: &Settings) -> Result<Option<BootstrapReport>, OperatorError> {
        if !settings.bootstrap.enabled || self.identity.org_count().await? > 0 {
            return Ok(None);
        }
        let org = self.create_org(&settings.bootstrap.org_name).await?;
        let project = self.create_project(&org.id, "Default").await?;
        let (key, token) = self.create_key(&project.id, "bootstrap", &Scopes::all()).await?;
        let credit = settings.bootstrap.starting_credit;
        if credit.is_positive() {
            self.grant(&org.id, credit, Some(format!("bootstrap:{}", org.id))).await?;
        }
        Ok(Some(BootstrapReport { org, project, key, token, credit }))
    }
}
