//! Endpoints, events, deliveries and their attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{webhook_attempts, webhook_deliveries, webhook_endpoints};
use modelroute_db::{DbPool, db_execute, db_run, db_transaction};
use modelroute_types::{EventId, OrgId, WebhookAttemptId, WebhookDeliveryId, WebhookEndpointId, time};
use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use crate::outbound::{self, Policy};
use crate::seal::Sealer;
use crate::{WebhookError, WebhooksConfig, signature};

/// The event types an endpoint may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "execution.started",
    "execution.output",
    "execution.succeeded",
    "execution.failed",
    "execution.canceled",
    "billing.low_balance",
    "billing.auto_top_up_failed",
    "webhook.test",
];

/// The first KiB of an answer is kept with its attempt.
const EXCERPT_BYTES: usize = 1024;

/// An org's webhook endpoint (its secret is never in here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `we_…`.
    pub id: WebhookEndpointId,
    /// The owner.
    pub org_id: OrgId,
    /// Where events go.
    pub url: String,
    /// The org's note.
    pub description: String,
    /// The event types delivered (empty: all).
    pub event_types: Vec<String>,
    /// Whether events are delivered.
    pub enabled: bool,
    /// Why the platform disabled it.
    pub disabled_reason: Option<String>,
    /// Since when every delivery has failed.
    pub failing_since: Option<NaiveDateTime>,
    /// Until when the previous secret still signs (after a rotation).
    pub previous_secret_expires_at: Option<NaiveDateTime>,
    /// Created for executions' own webhook URL: it receives only the events
    /// of the executions that name it.
    pub per_execution: bool,
    /// When it was created.
    pub created_at: NaiveDateTime,
    /// When it last changed.
    pub updated_at: NaiveDateTime,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints)]
struct EndpointRow {
    id: String,
    org_id: String,
    url: String,
    description: String,
    event_types: String,
    enabled: bool,
    disabled_reason: Option<String>,
    secret_sealed: String,
    previous_secret_sealed: Option<String>,
    previous_secret_expires_at: Option<NaiveDateTime>,
    failing_since: Option<NaiveDateTime>,
    alerted_at: Option<NaiveDateTime>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    per_execution: bool,
}

impl EndpointRow {
    fn public(&self) -> Endpoint {
        Endpoint {
            id: WebhookEndpointId::from_trusted(self.id.clone()),
            org_id: OrgId::from_trusted(self.org_id.clone()),
            url: self.url.clone(),
            description: self.description.clone(),
            event_types: self.event_types.split_whitespace().map(str::to_owned).collect(),
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone(),
            failing_since: self.failing_since,
            previous_secret_expires_at: self.previous_secret_expires_at,
            per_execution: self.per_execution,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.split_whitespace().any(|t| t == event_type)
    }
}

/// A new endpoint.
#[derive(Clone, Debug, Default)]
pub struct NewEndpoint {
    /// Where events go.
    pub url: String,
    /// A note.
    pub description: String,
    /// The event types to deliver (empty: all).
    pub event_types: Vec<String>,
}

/// Changes to an endpoint; `None` leaves a value as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointUpdate {
    /// A new URL.
    pub url: Option<String>,
    /// A new note.
    pub description: Option<String>,
    /// New event types (empty: all).
    pub event_types: Option<Vec<String>>,
    /// Enable (clearing the platform's reason and the failure streak) or disable.
    pub enabled: Option<bool>,
}

/// How the deliveries of one execution's events stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryStatus {
    /// Deliveries recorded (one per event and endpoint).
    pub total: usize,
    /// Delivered.
    pub delivered: usize,
    /// Still being attempted.
    pub pending: usize,
    /// Given up on.
    pub failed: usize,
    /// The last delivery's time.
    pub last_delivered_at: Option<NaiveDateTime>,
}

/// One event's delivery to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
pub struct Delivery {
    /// `wdl_…`.
    pub id: String,
    /// The owner.
    pub org_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The `webhook-id` every attempt carries.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The body sent.
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due.
    pub next_attempt_at: Option<NaiveDateTime>,
    /// The last answer's status.
    pub last_status: Option<i32>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When the event happened.
    pub created_at: NaiveDateTime,
    /// When it was delivered.
    pub delivered_at: Option<NaiveDateTime>,
}

/// One attempt of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = webhook_attempts)]
pub struct Attempt {
    /// `wat_…`.
    pub id: String,
    /// The delivery.
    pub delivery_id: String,
    /// When it was made.
    pub attempted_at: NaiveDateTime,
    /// The answer's status, if one came.
    pub status_code: Option<i32>,
    /// How long it took.
    pub latency_ms: i64,
    /// The first KiB of the answer.
    pub response_excerpt: Option<String>,
    /// Why it failed, if no status says.
    pub error: Option<String>,
}

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempted {
    /// A 2xx.
    Delivered,
    /// Failed; the next attempt is due then.
    Retry(NaiveDateTime),
    /// Failed for good. `alert`: the org should be told its endpoint keeps
    /// failing (once per failing period).
    Failed {
        /// Tell the org's owners and admins.
        alert: bool,
    },
    /// Not attempted: not due, already done, or claimed by another worker.
    Skipped,
}

/// Webhooks: endpoints and their deliveries. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Webhooks {
    pool: DbPool,
    sealer: Arc<Sealer>,
    config: Arc<WebhooksConfig>,
    policy: Policy,
    client: reqwest::Client,
}

fn endpoint_not_found() -> WebhookError {
    WebhookError::NotFound("such webhook endpoint".into())
}

fn delivery_not_found() -> WebhookError {
    WebhookError::NotFound("such webhook delivery".into())
}

fn event_types(types: &[String]) -> Result<String, WebhookError> {
    for t in types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(WebhookError::InvalidInput {
                field: "event_types",
                message: format!(
                    "unknown event type `{}` (known: {})",
                    t.chars().take(64).collect::<String>(),
                    EVENT_TYPES.join(", ")
                ),
            });
        }
    }
    let mut sorted: Vec<&str> = types.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    Ok(sorted.join(" "))
}

fn excerpt(bytes: &[u8]) -> String {
    let cut = bytes.get(..EXCERPT_BYTES.min(bytes.len())).unwrap_or_default();
    String::from_utf8_lossy(cut).into_owned()
}

impl Webhooks {
    /// Webhooks over `pool`; `seal_key` seals endpoint secrets at rest (the
    /// server secret's `webhook-secrets` key); `policy` says where endpoints
    /// may point.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new(
        pool: DbPool,
        config: WebhooksConfig,
        seal_key: &[u8; 32],
        policy: Policy,
    ) -> Result<Self, WebhookError> {
        if config.timeout_secs == 0 {
            return Err(WebhookError::Config("timeout_secs must be at least 1".into()));
        }
        let client = outbound::client(policy, Duration::from_secs(config.timeout_secs))
            .map_err(|e| WebhookError::Config(format!("HTTP client: {e}")))?;
        Ok(Self { pool, sealer: Arc::new(Sealer::new(seal_key)?), config: Arc::new(config), policy, client })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &WebhooksConfig {
        &self.config
    }

    /// Where endpoints may point.
    #[must_use]
    pub const fn policy(&self) -> Policy {
        self.policy
    }

    fn check_url(&self, url: &str) -> Result<String, WebhookError> {
        let invalid = |message: String| WebhookError::InvalidInput { field: "url", message };
        let parsed = Url::parse(url.trim()).map_err(|e| invalid(format!("not a URL: {e}")))?;
        if url.len() > 2048 {
            return Err(invalid("longer than 2048 characters".into()));
        }
        self.policy.check_url(&parsed).map_err(|e| invalid(e.to_string()))?;
        Ok(parsed.to_string())
    }

    /// Creates an endpoint; returns it and its signing secret, shown once.
    ///
    /// # Errors
    /// A URL the policy refuses, an unknown event type, too many endpoints,
    /// or a database failure.
    pub async fn create_endpoint(&self, org: &OrgId, new: NewEndpoint) -> Result<(Endpoint, String), WebhookError> {
        self.create(org, new, false).await
    }

    async fn create(
        &self,
        org: &OrgId,
        new: NewEndpoint,
        per_execution: bool,
    ) -> Result<(Endpoint, String), WebhookError> {
        let url = self.check_url(&new.url)?;
        let types = event_types(&new.event_types)?;
        let count: i64 = db_run!(self.pool, |conn| webhook_endpoints::table
            .filter(webhook_endpoints::org_id.eq(org.as_str()))
            .count()
            .get_result(conn)
            .await)?;
        if usize::try_from(count).unwrap_or(usize::MAX) >= self.config.max_endpoints_per_org {
            return Err(WebhookError::TooMany(self.config.max_endpoints_per_org));
        }
        let id = WebhookEndpointId::new();
        let secret = signature::new_secret().map_err(|_| WebhookError::Sealed("no randomness"))?;
        let sealed = self.sealer.seal(&secret, id.as_str())?;
        let now = time::now();
        db_run!(self.pool, |conn| diesel::insert_into(webhook_endpoints::table)
            .values((
                webhook_endpoints::id.eq(id.as_str()),
                webhook_endpoints::org_id.eq(org.as_str()),
                webhook_endpoints::url.eq(&url),
                webhook_endpoints::description.eq(new.description.trim()),
                webhook_endpoints::event_types.eq(&types),
                webhook_endpoints::enabled.eq(true),
                webhook_endpoints::secret_sealed.eq(&sealed),
                webhook_endpoints::created_at.eq(now),
                webhook_endpoints::updated_at.eq(now),
                webhook_endpoints::per_execution.eq(per_execution),
            ))
            .execute(conn)
            .await)?;
        Ok((self.endpoint(org, &id).await?, secret))
    }

    /// Checks a URL an execution names as its own webhook, as an
    /// endpoint's is checked (the outbound policy).
    ///
    /// # Errors
    /// [`WebhookError::InvalidInput`] naming `url`.
    pub fn check_execution_url(&self, url: &str) -> Result<String, WebhookError> {
        self.check_url(url)
    }

    /// The endpoint behind executions' own webhook `url` for `org`: found,
    /// or created (its secret then answered, the only time it is shown;
    /// it rotates like any endpoint's).
    ///
    /// # Errors
    /// A URL the policy refuses, too many endpoints, or a database failure.
    pub async fn execution_endpoint(&self, org: &OrgId, url: &str) -> Result<(Endpoint, Option<String>), WebhookError> {
        let url = self.check_url(url)?;
        if let Some(row) = self.execution_endpoint_row(org, &url).await? {
            return Ok((row.public(), None));
        }
        let new = NewEndpoint { url, description: "per-execution webhook".into(), event_types: Vec::new() };
        let (endpoint, secret) = self.create(org, new, true).await?;
        Ok((endpoint, Some(secret)))
    }

    async fn execution_endpoint_row(&self, org: &OrgId, url: &str) -> Result<Option<EndpointRow>, WebhookError> {
        Ok(db_run!(self.pool, |conn| webhook_endpoints::table
            .filter(webhook_endpoints::org_id.eq(org.as_str()))
            .filter(webhook_endpoints::per_execution.eq(true))
            .filter(webhook_endpoints::url.eq(url))
            .order(webhook_endpoints::id.asc())
            .select(EndpointRow::as_select())
            .first(conn)
            .await
            .optional())?)
    }

    async fn row(&self, org: &OrgId, id: &WebhookEndpointId) -> Result<EndpointRow, WebhookError> {
        let row: Option<EndpointRow> = db_run!(self.pool, |conn| webhook_endpoints::table
            .filter(webhook_endpoints::id.eq(id.as_str()))
            .filter(webhook_endpoints::org_id.eq(org.as_str()))
            .select(EndpointRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.ok_or_else(endpoint_not_found)
    }

    /// An endpoint of `org`.
    ///
    /// # Errors
    /// Not found (another org's included), or a database failure.
    pub async fn endpoint(&self, org: &OrgId, id: &WebhookEndpointId) -> Result<Endpoint, WebhookError> {
        Ok(self.row(org, id).await?.public())
    }

    /// The org's endpoints, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn endpoints(&self, org: &OrgId) -> Result<Vec<Endpoint>, WebhookError> {
        let rows: Vec<EndpointRow> = db_run!(self.pool, |conn| webhook_endpoints::table
            .filter(webhook_endpoints::org_id.eq(org.as_str()))
            .order(webhook_endpoints::id.asc())
            .select(EndpointRow::as_select())
            .load(conn)
            .await)?;
        Ok(rows.iter().map(EndpointRow::public).collect())
    }

    /// Changes an endpoint of `org`.
    ///
    /// # Errors
    /// Not found, a refused URL, an unknown event type, or a database failure.
    pub async fn update_endpoint(
        &self,
        org: &OrgId,
        id: &WebhookEndpointId,
        update: EndpointUpdate,
    ) -> Result<Endpoint, WebhookError> {
        let row = self.row(org, id).await?;
        let url = update.url.as_deref().map(|u| self.check_url(u)).transpose()?.unwrap_or(row.url);
        let types = update.event_types.as_deref().map(event_types).transpose()?.unwrap_or(row.event_types);
        let description = update.description.map_or(row.description, |d| d.trim().to_owned());
        let enabled = update.enabled.unwrap_or(row.enabled);
        // Enabling again clears the platform's reason and the failure streak.
        let (reason, failing, alerted) = if update.enabled == Some(true) {
            (None, None, None)
        } else if enabled {
            (row.disabled_reason, row.failing_since, row.alerted_at)
        } else {
            (
                row.disabled_reason.or_else(|| Some("disabled by the organization".into())),
                row.failing_since,
                row.alerted_at,
            )
        };
        let n = db_run!(self.pool, |conn| diesel::update(
            webhook_endpoints::table
                .filter(webhook_endpoints::id.eq(id.as_str()))
                .filter(webhook_endpoints::org_id.eq(org.as_str()))
        )
        .set((
            webhook_endpoints::url.eq(&url),
            webhook_endpoints::event_types.eq(&types),
            webhook_endpoints::description.eq(&description),
            webhook_endpoints::enabled.eq(enabled),
            webhook_endpoints::disabled_reason.eq(&reason),
            webhook_endpoints::failing_since.eq(failing),
            webhook_endpoints::alerted_at.eq(alerted),
            webhook_endpoints::updated_at.eq(time::now()),
        ))
        .execute(conn)
        .await)?;
        if n == 0 {
            return Err(endpoint_not_found());
        }
        self.endpoint(org, id).await
    }

    /// Deletes an endpoint of `org` with its deliveries and their attempts.
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn delete_endpoint(&self, org: &OrgId, id: &WebhookEndpointId) -> Result<(), WebhookError> {
        let (org, id) = (org.as_str().to_owned(), id.as_str().to_owned());
        let deleted: usize = db_transaction!(self.pool, |conn| {
            let deliveries = webhook_deliveries::table
                .filter(webhook_deliveries::endpoint_id.eq(&id))
                .filter(webhook_deliveries::org_id.eq(&org))
                .select(webhook_deliveries::id);
            diesel::delete(webhook_attempts::table.filter(webhook_attempts::delivery_id.eq_any(deliveries)))
                .execute(conn)
                .await?;
            diesel::delete(
                webhook_deliveries::table
                    .filter(webhook_deliveries::endpoint_id.eq(&id))
                    .filter(webhook_deliveries::org_id.eq(&org)),
            )
            .execute(conn)
            .await?;
            diesel::delete(
                webhook_endpoints::table
                    .filter(webhook_endpoints::id.eq(&id))
                    .filter(webhook_endpoints::org_id.eq(&org)),
            )
            .execute(conn)
            .await
        })?;
        if deleted == 0 {
            return Err(endpoint_not_found());
        }
        Ok(())
    }

    /// A new secret for an endpoint of `org`, shown once; the old one keeps
    /// signing (beside the new) for `grace`.
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn rotate_secret(
        &self,
        org: &OrgId,
        id: &WebhookEndpointId,
        grace: Duration,
    ) -> Result<(Endpoint, String), WebhookError> {
        let row = self.row(org, id).await?;
        let secret = signature::new_secret().map_err(|_| WebhookError::Sealed("no randomness"))?;
        let sealed = self.sealer.seal(&secret, id.as_str())?;
        let now = time::now();
        let until = now + chrono::Duration::from_std(grace).unwrap_or_else(|_| chrono::Duration::days(7));
        let previous = (!grace.is_zero()).then_some(row.secret_sealed);
        db_run!(self.pool, |conn| diesel::update(
            webhook_endpoints::table
                .filter(webhook_endpoints::id.eq(id.as_str()))
                .filter(webhook_endpoints::org_id.eq(org.as_str()))
        )
        .set((
            webhook_endpoints::secret_sealed.eq(&sealed),
            webhook_endpoints::previous_secret_sealed.eq(&previous),
            webhook_endpoints::previous_secret_expires_at.eq(previous.as_ref().map(|_| until)),
            webhook_endpoints::updated_at.eq(now),
        ))
        .execute(conn)
        .await)?;
        Ok((self.endpoint(org, id).await?, secret))
    }

    /// Records an event of `org` for every enabled endpoint that wants it;
    /// returns the deliveries to attempt now. The payload is Standard
    /// Webhooks' shape: `{"type", "timestamp", "data"}`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn emit(
        &self,
        org: &OrgId,
        event_type: &str,
        data: &Value,
    ) -> Result<Vec<WebhookDeliveryId>, WebhookError> {
        self.emit_about(org, event_type, data, None).await
    }

    /// Records an execution's event for every enabled endpoint of `org`
    /// that wants it and, when the execution names its own webhook `url`
    /// and wants the event (`events` empty: all), for that URL's endpoint;
    /// the deliveries remember the execution (its delivery status).
    ///
    /// # Errors
    /// A database failure.
    pub async fn emit_for_execution(
        &self,
        org: &OrgId,
        execution: &str,
        event_type: &str,
        data: &Value,
        own: Option<(&str, &[String])>,
    ) -> Result<Vec<WebhookDeliveryId>, WebhookError> {
        let mut ids = self.emit_about(org, event_type, data, Some(execution)).await?;
        if let Some((url, events)) = own
            && (events.is_empty() || events.iter().any(|e| e == event_type))
            && let Ok(url) = Url::parse(url)
            && let Some(row) = self.execution_endpoint_row(org, url.as_str()).await?
            && row.enabled
        {
            ids.extend(self.record(org, &[row.id], event_type, data, Some(execution)).await?);
        }
        Ok(ids)
    }

    async fn emit_about(
        &self,
        org: &OrgId,
        event_type: &str,
        data: &Value,
        execution: Option<&str>,
    ) -> Result<Vec<WebhookDeliveryId>, WebhookError> {
        let rows: Vec<EndpointRow> = db_run!(self.pool, |conn| webhook_endpoints::table
            .filter(webhook_endpoints::org_id.eq(org.as_str()))
            .filter(webhook_endpoints::enabled.eq(true))
            .filter(webhook_endpoints::per_execution.eq(false))
            .select(EndpointRow::as_select())
            .load(conn)
            .await)?;
        let targets: Vec<String> = rows.into_iter().filter(|r| r.wants(event_type)).map(|r| r.id).collect();
        self.record(org, &targets, event_type, data, execution).await
    }

    /// How the deliveries of an execution's events stand.
    ///
    /// # Errors
    /// A database failure.
    pub async fn execution_deliveries(&self, org: &OrgId, execution: &str) -> Result<DeliveryStatus, WebhookError> {
        let rows: Vec<(String, Option<NaiveDateTime>)> = db_run!(self.pool, |conn| webhook_deliveries::table
            .filter(webhook_deliveries::org_id.eq(org.as_str()))
            .filter(webhook_deliveries::execution_id.eq(execution))
            .select((webhook_deliveries::status, webhook_deliveries::delivered_at))
            .load(conn)
            .await)?;
        let count = |s: &str| rows.iter().filter(|(status, _)| status == s).count();
        Ok(DeliveryStatus {
            total: rows.len(),
            delivered: count("delivered"),
            pending: count("pending"),
            failed: count("failed"),
            last_delivered_at: rows.iter().filter_map(|(_, at)| *at).max(),
        })
    }

    /// Sends a `webhook.test` event to one endpoint of `org`, whatever its
    /// filter.
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn send_test(&self, org: &OrgId, id: &WebhookEndpointId) -> Result<WebhookDeliveryId, WebhookError> {
        let row = self.row(org, id).await?;
        let data = json!({ "endpoint_id": row.id, "message": "a test event from ModelRoute" });
        let ids = self.record(org, &[row.id], "webhook.test", &data, None).await?;
        ids.into_iter().next().ok_or_else(endpoint_not_found)
    }

    async fn record(
        &self,
        org: &OrgId,
        endpoints: &[String],
        event_type: &str,
        data: &Value,
        execution: Option<&str>,
    ) -> Result<Vec<WebhookDeliveryId>, WebhookError> {
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        let now = time::now();
        let event = EventId::new();
        let payload = json!({ "type": event_type, "timestamp": time::rfc3339(now), "data": data }).to_string();
        let ids: Vec<WebhookDeliveryId> = endpoints.iter().map(|_| WebhookDeliveryId::new()).collect();
        let rows: Vec<_> = ids
            .iter()
            .zip(endpoints)
            .map(|(id, endpoint)| {
                (
                    webhook_deliveries::id.eq(id.to_string()),
                    webhook_deliveries::org_id.eq(org.to_string()),
                    webhook_deliveries::endpoint_id.eq(endpoint.clone()),
                    webhook_deliveries::event_id.eq(event.to_string()),
                    webhook_deliveries::event_type.eq(event_type.to_owned()),
                    webhook_deliveries::payload.eq(payload.clone()),
                    webhook_deliveries::status.eq("pending"),
                    webhook_deliveries::attempts.eq(0),
                    webhook_deliveries::next_attempt_at.eq(Some(now)),
                    webhook_deliveries::created_at.eq(now),
                    webhook_deliveries::execution_id.eq(execution.map(str::to_owned)),
                )
            })
            .collect();
        // One statement per endpoint (an org has a handful): SQLite's batch
        // insert cannot take these rows. On SQLite they go through the
        // shared writer (an event is written on an execution's path).
        for row in rows {
            db_execute!(self.pool, diesel::insert_into(webhook_deliveries::table).values(row.clone()))?;
        }
        metrics::counter!("webhook_events_total", "type" => event_type.to_owned()).increment(1);
        Ok(ids)
    }

    /// Pending deliveries whose next attempt is due by `now` (retries, and
    /// first attempts whose job was lost), at most `limit`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn due(&self, now: NaiveDateTime, limit: i64) -> Result<Vec<WebhookDeliveryId>, WebhookError> {
        let ids: Vec<String> = db_run!(self.pool, |conn| webhook_deliveries::table
            .filter(webhook_deliveries::status.eq("pending"))
            .filter(webhook_deliveries::next_attempt_at.le(now))
            .order(webhook_deliveries::next_attempt_at.asc())
            .limit(limit)
            .select(webhook_deliveries::id)
            .load(conn)
            .await)?;
        Ok(ids.into_iter().map(WebhookDeliveryId::from_trusted).collect())
    }

    /// The wait before retry number `n` (1-based) after a failure, jittered;
    /// `None` when the schedule has run out.
    fn retry_wait(&self, n: usize) -> Option<chrono::Duration> {
        let base = *self.config.retry_schedule_secs.get(n.checked_sub(1)?)?;
        let spread = base.saturating_mul(self.config.jitter_percent) / 100;
        let jitter = if spread == 0 {
            0
        } else {
            let mut b = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
            u64::from_le_bytes(b) % (2 * spread + 1)
        };
        let secs = base.saturating_sub(spread).saturating_add(jitter);
        Some(chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX)))
    }

    /// Makes one attempt of a delivery, if it is pending and due by `now`
    /// (claimed first, so two workers never both send it), and records it.
    ///
    /// # Errors
    /// A database failure (the delivery stays due and is tried again).
    pub async fn attempt(&self, id: &WebhookDeliveryId, now: NaiveDateTime) -> Result<Attempted, WebhookError> {
        // The claim: due and pending → its next attempt pushed past this
        // one's time limit (a worker that dies mid-attempt leaves it due again).
        let lease = now + chrono::Duration::seconds(i64::try_from(self.config.timeout_secs * 2 + 5).unwrap_or(60));
        let claimed: Option<Delivery> = db_run!(self.pool, |conn| diesel::update(
            webhook_deliveries::table
                .filter(webhook_deliveries::id.eq(id.as_str()))
                .filter(webhook_deliveries::status.eq("pending"))
                .filter(webhook_deliveries::next_attempt_at.le(now))
        )
        .set((
            webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
            webhook_deliveries::next_attempt_at.eq(Some(lease))
        ))
        .returning(Delivery::as_returning())
        .get_result(conn)
        .await
        .optional())?;
        let Some(delivery) = claimed else { return Ok(Attempted::Skipped) };
        let org = OrgId::from_trusted(delivery.org_id.clone());
        let endpoint_id = WebhookEndpointId::from_trusted(delivery.endpoint_id.clone());
        let endpoint = match self.row(&org, &endpoint_id).await {
            Ok(row) => row,
            Err(WebhookError::NotFound(_)) => return self.give_up(&delivery, "the endpoint was deleted").await,
            Err(e) => return Err(e),
        };
        if !endpoint.enabled {
            return self.give_up(&delivery, "the endpoint is disabled").await;
        }
        // Checked again at every attempt: a URL stored under a looser policy
        // (an IP literal never reaches the resolver) is not called.
        let Ok(url) = Url::parse(&endpoint.url) else {
            return self.give_up(&delivery, "the endpoint's URL is invalid").await;
        };
        if let Err(refused) = self.policy.check_url(&url) {
            return self.give_up(&delivery, &refused.to_string()).await;
        }
        // Sign with the current secret, and the previous one during its grace period.
        let mut secrets = vec![self.sealer.open(&endpoint.secret_sealed, &endpoint.id)?];
        if let (Some(prev), Some(until)) = (&endpoint.previous_secret_sealed, endpoint.previous_secret_expires_at)
            && until > now
        {
            secrets.push(self.sealer.open(prev, &endpoint.id)?);
        }
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let timestamp = time::unix_seconds(time::now());
        let body = delivery.payload.clone().into_bytes();
        let header = signature::header(&refs, &delivery.event_id, timestamp, &body);
        let started = Instant::now();
        let sent = self
            .client
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", header)
            .body(body)
            .send()
            .await;
        let (status, excerpt_text, error) = match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let mut buf = Vec::new();
                while buf.len() < EXCERPT_BYTES {
                    match response.chunk().await {
                        Ok(Some(c)) => buf.extend_from_slice(&c),
                        Ok(None) | Err(_) => break,
                    }
                }
                (Some(status), Some(excerpt(&buf)), None)
            }
            Err(e) => (None, None, Some(describe(&e))),
        };
        let latency = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let attempted_at = time::now();
        let status_i32 = status.map(i32::from);
        let attempt_row = (
            webhook_attempts::id.eq(WebhookAttemptId::new().into_string()),
            webhook_attempts::delivery_id.eq(delivery.id.as_str()),
            webhook_attempts::attempted_at.eq(attempted_at),
            webhook_attempts::status_code.eq(status_i32),
            webhook_attempts::latency_ms.eq(latency),
            webhook_attempts::response_excerpt.eq(excerpt_text.as_deref()),
            webhook_attempts::error.eq(error.as_deref()),
        );
        db_run!(self.pool, |conn| diesel::insert_into(webhook_attempts::table)
            .values(attempt_row)
            .execute(conn)
            .await)?;
        metrics::histogram!("webhook_attempt_seconds").record(started.elapsed().as_secs_f64());

        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let label = if ok { "delivered" } else { "failed" };
        metrics::counter!("webhook_attempts_total", "outcome" => label).increment(1);
        if ok {
            db_run!(self.pool, |conn| diesel::update(webhook_deliveries::table.find(delivery.id.as_str()))
                .set((
                    webhook_deliveries::status.eq("delivered"),
                    webhook_deliveries::delivered_at.eq(Some(attempted_at)),
                    webhook_deliveries::next_attempt_at.eq(None::<NaiveDateTime>),
                    webhook_deliveries::last_status.eq(status_i32),
                    webhook_deliveries::last_error.eq(None::<String>),
                ))
                .execute(conn)
                .await)?;
            db_run!(self.pool, |conn| diesel::update(webhook_endpoints::table.find(endpoint.id.as_str()))
                .set((
                    webhook_endpoints::failing_since.eq(None::<NaiveDateTime>),
                    webhook_endpoints::alerted_at.eq(None::<NaiveDateTime>),
                ))
                .execute(conn)
                .await)?;
            return Ok(Attempted::Delivered);
        }
        let why = match (status, &error) {
            (Some(s), _) if (300..400).contains(&s) => format!("answered {s} (redirects are not followed)"),
            (Some(s), _) => format!("answered {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "no answer".to_owned(),
        };
        db_run!(self.pool, |conn| diesel::update(webhook_endpoints::table.find(endpoint.id.as_str()))
            .filter(webhook_endpoints::failing_since.is_null())
            .set(webhook_endpoints::failing_since.eq(Some(attempted_at)))
            .execute(conn)
            .await)?;
        let failing_since = endpoint.failing_since.unwrap_or(attempted_at);
        let too_long = attempted_at - failing_since
            >= chrono::Duration::seconds(i64::try_from(self.config.disable_after_secs).unwrap_or(i64::MAX));
        if status == Some(410) {
            self.disable(&endpoint.id, "the endpoint answered 410 Gone").await?;
            return self.give_up_with(&delivery, status_i32, &why, &endpoint.id, endpoint.alerted_at.is_none()).await;
        }
        if too_long {
            self.disable(&endpoint.id, "every delivery failed for too long").await?;
            return self.give_up_with(&delivery, status_i32, &why, &endpoint.id, endpoint.alerted_at.is_none()).await;
        }
        let attempts = usize::try_from(delivery.attempts).unwrap_or(usize::MAX);
        match self.retry_wait(attempts) {
            Some(wait) => {
                let next = attempted_at + wait;
                db_run!(self.pool, |conn| diesel::update(webhook_deliveries::table.find(delivery.id.as_str()))
                    .set((
                        webhook_deliveries::next_attempt_at.eq(Some(next)),
                        webhook_deliveries::last_status.eq(status_i32),
                        webhook_deliveries::last_error.eq(Some(&why)),
                    ))
                    .execute(conn)
                    .await)?;
                Ok(Attempted::Retry(next))
            }
            None => self.give_up_with(&delivery, status_i32, &why, &endpoint.id, endpoint.alerted_at.is_none()).await,
        }
    }

    async fn disable(&self, endpoint: &str, reason: &str) -> Result<(), WebhookError> {
        tracing::warn!(endpoint, reason, "disabled a webhook endpoint");
        db_run!(self.pool, |conn| diesel::update(webhook_endpoints::table.find(endpoint))
            .set((
                webhook_endpoints::enabled.eq(false),
                webhook_endpoints::disabled_reason.eq(Some(reason)),
                webhook_endpoints::updated_at.eq(time::now()),
            ))
            .execute(conn)
            .await)?;
        Ok(())
    }

    async fn give_up(&self, delivery: &Delivery, why: &str) -> Result<Attempted, WebhookError> {
        db_run!(self.pool, |conn| diesel::update(webhook_deliveries::table.find(delivery.id.as_str()))
            .set((
                webhook_deliveries::status.eq("failed"),
                webhook_deliveries::next_attempt_at.eq(None::<NaiveDateTime>),
                webhook_deliveries::last_error.eq(Some(why)),
            ))
            .execute(conn)
            .await)?;
        Ok(Attempted::Failed { alert: false })
    }

    /// The delivery has failed for good; the org is alerted once per
    /// failing period of its endpoint.
    async fn give_up_with(
        &self,
        delivery: &Delivery,
        status: Option<i32>,
        why: &str,
        endpoint: &str,
        not_alerted: bool,
    ) -> Result<Attempted, WebhookError> {
        db_run!(self.pool, |conn| diesel::update(webhook_deliveries::table.find(delivery.id.as_str()))
            .set((
                webhook_deliveries::status.eq("failed"),
                webhook_deliveries::next_attempt_at.eq(None::<NaiveDateTime>),
                webhook_deliveries::last_status.eq(status),
                webhook_deliveries::last_error.eq(Some(why)),
            ))
            .execute(conn)
            .await)?;
        let alert = not_alerted
            && db_run!(self.pool, |conn| diesel::update(webhook_endpoints::table.find(endpoint))
                .filter(webhook_endpoints::alerted_at.is_null())
                .set(webhook_endpoints::alerted_at.eq(Some(time::now())))
                .execute(conn)
                .await)?
                > 0;
        Ok(Attempted::Failed { alert })
    }

    /// The org and endpoint of a delivery (for the platform's alerts).
    ///
    /// # Errors
    /// A database failure.
    pub async fn endpoint_of(&self, id: &WebhookDeliveryId) -> Result<Option<(OrgId, Endpoint)>, WebhookError> {
        let row: Option<EndpointRow> = db_run!(self.pool, |conn| webhook_endpoints::table
            .inner_join(webhook_deliveries::table.on(webhook_deliveries::endpoint_id.eq(webhook_endpoints::id)))
            .filter(webhook_deliveries::id.eq(id.as_str()))
            .select(EndpointRow::as_select())
            .first(conn)
            .await
            .optional())?;
        Ok(row.map(|r| (OrgId::from_trusted(r.org_id.clone()), r.public())))
    }

    /// A delivery of `org`.
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn delivery(
        &self,
        org: &OrgId,
        id: &WebhookDeliveryId,
    ) -> Result<(Delivery, Vec<Attempt>), WebhookError> {
        let delivery: Option<Delivery> = db_run!(self.pool, |conn| webhook_deliveries::table
            .filter(webhook_deliveries::id.eq(id.as_str()))
            .filter(webhook_deliveries::org_id.eq(org.as_str()))
            .select(Delivery::as_select())
            .first(conn)
            .await
            .optional())?;
        let delivery = delivery.ok_or_else(delivery_not_found)?;
        let attempts: Vec<Attempt> = db_run!(self.pool, |conn| webhook_attempts::table
            .filter(webhook_attempts::delivery_id.eq(id.as_str()))
            .order(webhook_attempts::attempted_at.asc())
            .select(Attempt::as_select())
            .load(conn)
            .await)?;
        Ok((delivery, attempts))
    }

    /// An endpoint's deliveries, newest first; `after` pages.
    ///
    /// # Errors
    /// Not found, a limit outside 1–100, or a database failure.
    pub async fn deliveries(
        &self,
        org: &OrgId,
        endpoint: &WebhookEndpointId,
        after: Option<&WebhookDeliveryId>,
        limit: i64,
    ) -> Result<Vec<Delivery>, WebhookError> {
        if !(1..=100).contains(&limit) {
            return Err(WebhookError::InvalidInput { field: "limit", message: "must be between 1 and 100".into() });
        }
        self.row(org, endpoint).await?;
        let after = after.map(WebhookDeliveryId::as_str);
        Ok(db_run!(self.pool, |conn| {
            let mut q = webhook_deliveries::table
                .filter(webhook_deliveries::endpoint_id.eq(endpoint.as_str()))
                .filter(webhook_deliveries::org_id.eq(org.as_str()))
                .order(webhook_deliveries::id.desc())
                .limit(limit)
                .select(Delivery::as_select())
                .into_boxed();
            if let Some(a) = after {
                q = q.filter(webhook_deliveries::id.lt(a));
            }
            q.load(conn).await
        })?)
    }

    /// Sends a delivery of `org` again now (a new attempt with the same
    /// `webhook-id`, so a receiver that got it can tell), whatever its
    /// status; its schedule starts over.
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn redeliver(&self, org: &OrgId, id: &WebhookDeliveryId) -> Result<(), WebhookError> {
        let n = db_run!(self.pool, |conn| diesel::update(
            webhook_deliveries::table
                .filter(webhook_deliveries::id.eq(id.as_str()))
                .filter(webhook_deliveries::org_id.eq(org.as_str()))
        )
        .set((
            webhook_deliveries::status.eq("pending"),
            webhook_deliveries::attempts.eq(0),
            webhook_deliveries::next_attempt_at.eq(Some(time::now())),
        ))
        .execute(conn)
        .await)?;
        if n == 0 {
            return Err(delivery_not_found());
        }
        Ok(())
    }
}

/// A failed request in words, without the URL (the org knows its own):
/// what failed, and the innermost cause (`Connection refused`, or the
/// outbound policy's refusal).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut innermost = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    match innermost {
        Some(cause) if !e.is_timeout() => format!("{what}: {cause}"),
        _ => what.to_owned(),
    }
}
