use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{billing_settings, orgs, stripe_events};
use modelroute_db::{DbPool, db_run};
use modelroute_ledger::{CreditSource, Ledger as _, LedgerError, SqlLedger};
use modelroute_types::{EntryId, Money, OrgId, time};
use serde_json::Value;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest as _};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionPaymentIntentData, ProductData,
};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
use stripe_core::setup_intent::{CreateSetupIntent, CreateSetupIntentUsage};

use crate::webhook::verify_signature;
use crate::{BillingConfig, BillingError};

/// Nano-dollars per cent.
const NANO_PER_CENT: i64 = 10_000_000;
/// An auto top-up claim older than this is considered lost and retried.
const STALE_CLAIM: chrono::Duration = chrono::Duration::hours(1);

/// Something billing wants an org's billing contacts told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alert {
    /// The available balance fell below the org's alert threshold.
    LowBalance {
        /// What is available.
        available: Money,
        /// The threshold.
        threshold: Money,
    },
    /// An automatic top-up failed; auto top-up is now off.
    AutoTopUpFailed {
        /// Stripe's reason (`card_declined`, `authentication_required`, …).
        reason: String,
    },
}

/// Delivers alerts to an org's billing contacts (the server emails its
/// owners and admins). Called without waiting: implementations spawn.
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Tells `org`'s billing contacts.
    fn alert(&self, org: &OrgId, alert: &Alert);
}

/// A Checkout Session to send the browser to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// Stripe's session id (`cs_…`).
    pub id: String,
    /// Where to send the browser.
    pub url: String,
}

/// An org's auto top-up settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AutoTopUp {
    /// Whether it is on.
    pub enabled: bool,
    /// Top up when the available balance falls below this.
    pub threshold: Money,
    /// By this much.
    pub amount: Money,
    /// Whether a payment method is saved.
    pub has_payment_method: bool,
    /// Why the last automatic top-up failed (it was turned off then).
    pub last_failure: Option<String>,
    /// This org's low-balance alert threshold (else the platform's).
    pub low_balance_alert: Option<Money>,
}

/// What a webhook did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// A payment was credited.
    Credited {
        /// To whom.
        org: OrgId,
        /// How much.
        amount: Money,
        /// The ledger entry.
        entry: EntryId,
    },
    /// A payment method was saved for the org.
    PaymentMethodSaved(OrgId),
    /// An automatic top-up failed; auto top-up was turned off.
    AutoTopUpFailed(OrgId),
    /// Nothing to do (another event type, an unpaid session, …).
    Ignored(String),
}

impl WebhookOutcome {
    fn label(&self) -> String {
        match self {
            Self::Credited { entry, .. } => format!("credited {entry}"),
            Self::PaymentMethodSaved(_) => "payment method saved".into(),
            Self::AutoTopUpFailed(_) => "auto top-up failed".into(),
            Self::Ignored(why) => format!("ignored: {why}"),
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = billing_settings)]
struct SettingsRow {
    stripe_customer_id: Option<String>,
    payment_method_id: Option<String>,
    auto_top_up: bool,
    threshold: i64,
    top_up_amount: i64,
    low_balance_alert: Option<i64>,
    last_failure: Option<String>,
    low_balance_alerted_at: Option<NaiveDateTime>,
}

impl SettingsRow {
    fn to_auto_top_up(&self) -> AutoTopUp {
        AutoTopUp {
            enabled: self.auto_top_up,
            threshold: Money::from_units(self.threshold),
            amount: Money::from_units(self.top_up_amount),
            has_payment_method: self.payment_method_id.is_some(),
            last_failure: self.last_failure.clone(),
            low_balance_alert: self.low_balance_alert.map(Money::from_units),
        }
    }
}

/// Billing over the ledger and Stripe.
#[derive(Clone, Debug)]
pub struct Billing {
    pool: DbPool,
    ledger: SqlLedger,
    config: Arc<BillingConfig>,
    stripe: Option<Client>,
    notifier: Arc<dyn Notifier>,
}

fn stripe_error(e: &StripeError) -> String {
    match e {
        StripeError::Stripe(api, status) => {
            let code = api.code.as_ref().map(|c| c.as_str().to_owned()).unwrap_or_default();
            let decline = api.decline_code.clone().unwrap_or_default();
            let reason = if decline.is_empty() { code } else { format!("{code}: {decline}") };
            format!("{} (HTTP {status})", if reason.is_empty() { "refused".to_owned() } else { reason })
        }
        other => other.to_string(),
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_str)
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Billing {
    /// Billing over `pool` and `ledger`, telling `notifier` of alerts.
    ///
    /// # Errors
    /// An invalid Stripe configuration.
    pub fn new(
        pool: DbPool,
        ledger: SqlLedger,
        config: BillingConfig,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Self, BillingError> {
        let key = config.stripe.secret_key.expose();
        let stripe = if key.is_empty() {
            None
        } else {
            Some(
                ClientBuilder::new(key)
                    .url(config.stripe.api_base.clone())
                    .timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| BillingError::InvalidInput { field: "billing.stripe", message: e.to_string() })?,
            )
        };
        Ok(Self { pool, ledger, config: Arc::new(config), stripe, notifier })
    }

    /// Whether card payments are configured.
    #[must_use]
    pub const fn stripe_enabled(&self) -> bool {
        self.stripe.is_some()
    }

    fn client(&self) -> Result<&Client, BillingError> {
        self.stripe.as_ref().ok_or(BillingError::StripeOff)
    }

    fn currency(&self) -> Result<stripe_types::Currency, BillingError> {
        self.config.stripe.currency.parse().map_err(|_| BillingError::InvalidInput {
            field: "billing.stripe.currency",
            message: format!("`{}` is not a currency Stripe knows", self.config.stripe.currency),
        })
    }

    /// Whole cents of an amount within the top-up limits.
    fn cents(&self, field: &'static str, amount: Money) -> Result<i64, BillingError> {
        let (min, max) = (self.config.stripe.min_top_up, self.config.stripe.max_top_up);
        if amount < min || amount > max {
            return Err(BillingError::InvalidInput { field, message: format!("must be between {min} and {max}") });
        }
        if amount.units() % NANO_PER_CENT != 0 {
            return Err(BillingError::InvalidInput { field, message: "must be a whole number of cents".into() });
        }
        Ok(amount.units() / NANO_PER_CENT)
    }

    async fn settings(&self, org: &OrgId) -> Result<SettingsRow, BillingError> {
        let now = time::now();
        db_run!(self.pool, |conn| diesel::insert_into(billing_settings::table)
            .values((
                billing_settings::org_id.eq(org.as_str()),
                billing_settings::auto_top_up.eq(false),
                billing_settings::threshold.eq(0),
                billing_settings::top_up_amount.eq(0),
                billing_settings::updated_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await)?;
        Ok(db_run!(self.pool, |conn| billing_settings::table
            .find(org.as_str())
            .select(SettingsRow::as_select())
            .first(conn)
            .await)?)
    }

    /// Creates a Checkout Session that tops `org` up by `amount`. The
    /// balance is credited only when Stripe's signed webhook says it was paid.
    ///
    /// # Errors
    /// Stripe off, an amount outside the limits or not in whole cents, or
    /// Stripe failing.
    pub async fn checkout(
        &self,
        org: &OrgId,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> Result<Checkout, BillingError> {
        let client = self.client()?;
        let cents = self.cents("amount", amount)?;
        let meta = metadata(&[("org_id", org.as_str()), ("kind", "top_up")]);
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(self.currency()?);
        price.unit_amount = Some(cents);
        price.product_data = Some(ProductData::new("ModelRoute credit"));
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price_data = Some(price);
        item.quantity = Some(1);
        let mut intent = CreateCheckoutSessionPaymentIntentData::new();
        intent.metadata = Some(meta.clone());
        let mut request = CreateCheckoutSession::new()
            .mode(stripe_shared::CheckoutSessionMode::Payment)
            .line_items(vec![item])
            .client_reference_id(org.as_str())
            .metadata(meta)
            .payment_intent_data(intent)
            .success_url(self.config.stripe.success_url.clone())
            .cancel_url(self.config.stripe.cancel_url.clone())
            .customize();
        if let Some(key) = idempotency_key {
            let key = IdempotencyKey::new(format!("checkout:{org}:{key}"))
                .map_err(|e| BillingError::InvalidInput { field: "Idempotency-Key", message: e.to_string() })?;
            request = request.request_strategy(RequestStrategy::Idempotent(key));
        }
        let session = request.send(client).await.map_err(|e| BillingError::Stripe(stripe_error(&e)))?;
        let url = session.url.ok_or_else(|| BillingError::Stripe("the Checkout Session has no URL".into()))?;
        Ok(Checkout { id: session.id.to_string(), url })
    }

    /// Starts saving a card for off-session payments: a SetupIntent for the
    /// org's Stripe customer (created on first use). Answers its
    /// `client_secret` for Stripe.js; the card is saved when the signed
    /// `setup_intent.succeeded` webhook arrives.
    ///
    /// # Errors
    /// Stripe off or failing.
    pub async fn setup_payment_method(&self, org: &OrgId) -> Result<String, BillingError> {
        let client = self.client()?;
        let settings = self.settings(org).await?;
        let customer = match settings.stripe_customer_id {
            Some(c) => c,
            None => {
                let key =
                    IdempotencyKey::new(format!("customer:{org}")).map_err(|e| BillingError::Stripe(e.to_string()))?;
                let created = CreateCustomer::new()
                    .metadata(metadata(&[("org_id", org.as_str())]))
                    .customize()
                    .request_strategy(RequestStrategy::Idempotent(key))
                    .send(client)
                    .await
                    .map_err(|e| BillingError::Stripe(stripe_error(&e)))?;
                let id = created.id.to_string();
                db_run!(self.pool, |conn| diesel::update(billing_settings::table.find(org.as_str()))
                    .set(billing_settings::stripe_customer_id.eq(Some(&id)))
                    .execute(conn)
                    .await)?;
                id
            }
        };
        let intent = CreateSetupIntent::new()
            .customer(customer)
            .usage(CreateSetupIntentUsage::OffSession)
            .metadata(metadata(&[("org_id", org.as_str())]))
            .send(client)
            .await
            .map_err(|e| BillingError::Stripe(stripe_error(&e)))?;
        intent.client_secret.ok_or_else(|| BillingError::Stripe("the SetupIntent has no client_secret".into()))
    }

    /// The org's auto top-up settings.
    ///
    /// # Errors
    /// A database failure.
    pub async fn auto_top_up(&self, org: &OrgId) -> Result<AutoTopUp, BillingError> {
        Ok(self.settings(org).await?.to_auto_top_up())
    }

    /// Sets auto top-up (and the org's low-balance alert threshold).
    /// Turning it on needs a saved payment method; it clears the last failure.
    ///
    /// # Errors
    /// Stripe off, no payment method, an amount outside the top-up limits,
    /// a negative threshold.
    pub async fn set_auto_top_up(
        &self,
        org: &OrgId,
        enabled: bool,
        threshold: Money,
        amount: Money,
        low_balance_alert: Option<Money>,
    ) -> Result<AutoTopUp, BillingError> {
        let settings = self.settings(org).await?;
        if threshold.units() < 0 {
            return Err(BillingError::InvalidInput { field: "threshold", message: "must not be negative".into() });
        }
        if low_balance_alert.is_some_and(|m| m.units() < 0) {
            return Err(BillingError::InvalidInput {
                field: "low_balance_alert",
                message: "must not be negative".into(),
            });
        }
        if enabled {
            self.client()?;
            self.cents("amount", amount)?;
            if settings.payment_method_id.is_none() {
                return Err(BillingError::NoPaymentMethod);
            }
        }
        db_run!(self.pool, |conn| diesel::update(billing_settings::table.find(org.as_str()))
            .set((
                billing_settings::auto_top_up.eq(enabled),
                billing_settings::threshold.eq(threshold.units()),
                billing_settings::top_up_amount.eq(amount.units()),
                billing_settings::low_balance_alert.eq(low_balance_alert.map(Money::units)),
                billing_settings::last_failure.eq(None::<String>),
                billing_settings::updated_at.eq(time::now()),
            ))
            .execute(conn)
            .await)?;
        self.auto_top_up(org).await
    }

    /// Handles a webhook delivery: verifies its signature (before reading
    /// anything of it), then acts once per payment whatever the number or
    /// order of deliveries — the ledger credit's idempotency key is the
    /// payment intent, which `checkout.session.completed` and
    /// `payment_intent.succeeded` of one payment share.
    ///
    /// # Errors
    /// [`BillingError::BadSignature`] (answer 400: nothing changed), a
    /// database failure (answer 5xx: Stripe delivers again).
    pub async fn handle_webhook(&self, payload: &[u8], signature: &str) -> Result<WebhookOutcome, BillingError> {
        let secret = self.config.stripe.webhook_secret.expose();
        if secret.is_empty() {
            return Err(BillingError::StripeOff);
        }
        verify_signature(payload, signature, secret, time::now().and_utc().timestamp())?;
        let event: Value = serde_json::from_slice(payload)
            .map_err(|_| BillingError::InvalidInput { field: "body", message: "not a JSON event".into() })?;
        let id = str_at(&event, &["id"]).unwrap_or_default().to_owned();
        let kind = str_at(&event, &["type"]).unwrap_or_default().to_owned();
        let object = event.get("data").and_then(|d| d.get("object")).cloned().unwrap_or(Value::Null);
        let org = str_at(&object, &["metadata", "org_id"])
            .or_else(|| str_at(&object, &["client_reference_id"]))
            .and_then(|o| o.parse::<OrgId>().ok());
        let outcome = match (kind.as_str(), org.clone()) {
            (_, None) => WebhookOutcome::Ignored("no org in the metadata".into()),
            ("checkout.session.completed" | "checkout.session.async_payment_succeeded", Some(org)) => {
                if str_at(&object, &["mode"]) != Some("payment") || str_at(&object, &["payment_status"]) != Some("paid")
                {
                    WebhookOutcome::Ignored("not a paid payment session".into())
                } else {
                    let intent = str_at(&object, &["payment_intent"]).unwrap_or_default();
                    let cents = object.get("amount_total").and_then(Value::as_i64).unwrap_or(0);
                    self.credit_payment(&org, intent, cents, str_at(&object, &["currency"])).await?
                }
            }
            ("payment_intent.succeeded", Some(org)) => {
                let intent = str_at(&object, &["id"]).unwrap_or_default();
                let cents = object.get("amount_received").and_then(Value::as_i64).unwrap_or(0);
                let outcome = self.credit_payment(&org, intent, cents, str_at(&object, &["currency"])).await?;
                self.finish_auto_top_up(&org, intent).await?;
                outcome
            }
            ("payment_intent.payment_failed", Some(org))
                if str_at(&object, &["metadata", "kind"]) == Some("auto_top_up") =>
            {
                let reason = str_at(&object, &["last_payment_error", "code"]).unwrap_or("payment_failed").to_owned();
                self.auto_top_up_failed(&org, &reason).await?;
                WebhookOutcome::AutoTopUpFailed(org)
            }
            ("setup_intent.succeeded", Some(org)) => {
                let (Some(method), Some(customer)) =
                    (str_at(&object, &["payment_method"]), str_at(&object, &["customer"]))
                else {
                    return Ok(WebhookOutcome::Ignored("a SetupIntent without payment method or customer".into()));
                };
                self.settings(&org).await?;
                db_run!(self.pool, |conn| diesel::update(billing_settings::table.find(org.as_str()))
                    .set((
                        billing_settings::payment_method_id.eq(Some(method)),
                        billing_settings::stripe_customer_id.eq(Some(customer)),
                        billing_settings::updated_at.eq(time::now()),
                    ))
                    .execute(conn)
                    .await)?;
                WebhookOutcome::PaymentMethodSaved(org)
            }
            (other, _) => WebhookOutcome::Ignored(format!("event type {other}")),
        };
        let label = outcome.label();
        db_run!(self.pool, |conn| diesel::insert_into(stripe_events::table)
            .values((
                stripe_events::id.eq(&id),
                stripe_events::event_type.eq(&kind),
                stripe_events::org_id.eq(org.as_ref().map(OrgId::as_str)),
                stripe_events::outcome.eq(&label),
                stripe_events::received_at.eq(time::now()),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await)?;
        tracing::info!(event_id = %id, event_type = %kind, outcome = %label, "stripe webhook");
        Ok(outcome)
    }

    /// Credits a payment once: the idempotency key is the payment intent.
    async fn credit_payment(
        &self,
        org: &OrgId,
        intent: &str,
        cents: i64,
        currency: Option<&str>,
    ) -> Result<WebhookOutcome, BillingError> {
        if intent.is_empty() || cents <= 0 {
            return Ok(WebhookOutcome::Ignored("no payment intent or amount".into()));
        }
        if currency.is_some_and(|c| !c.eq_ignore_ascii_case(&self.config.stripe.currency)) {
            return Ok(WebhookOutcome::Ignored("another currency".into()));
        }
        let amount = Money::from_units(cents.checked_mul(NANO_PER_CENT).ok_or(LedgerError::Overflow)?);
        let entry = self.ledger.credit(org, amount, CreditSource::Stripe, Some(format!("stripe:{intent}"))).await?;
        Ok(WebhookOutcome::Credited { org: org.clone(), amount, entry })
    }

    /// Clears the org's in-flight auto top-up once its payment succeeded.
    async fn finish_auto_top_up(&self, org: &OrgId, intent: &str) -> Result<(), BillingError> {
        db_run!(self.pool, |conn| diesel::update(
            billing_settings::table.find(org.as_str()).filter(billing_settings::in_flight_intent.eq(intent))
        )
        .set((
            billing_settings::in_flight_since.eq(None::<NaiveDateTime>),
            billing_settings::in_flight_intent.eq(None::<String>)
        ))
        .execute(conn)
        .await)?;
        Ok(())
    }

    async fn auto_top_up_failed(&self, org: &OrgId, reason: &str) -> Result<(), BillingError> {
        let changed = db_run!(self.pool, |conn| diesel::update(
            billing_settings::table.find(org.as_str()).filter(billing_settings::auto_top_up.eq(true))
        )
        .set((
            billing_settings::auto_top_up.eq(false),
            billing_settings::last_failure.eq(Some(reason)),
            billing_settings::in_flight_since.eq(None::<NaiveDateTime>),
            billing_settings::in_flight_intent.eq(None::<String>),
            billing_settings::updated_at.eq(time::now()),
        ))
        .execute(conn)
        .await)?;
        // Told once, by whichever replica (or delivery) turned it off.
        if changed == 1 {
            tracing::warn!(org_id = %org, reason, "auto top-up failed and was turned off");
            self.notifier.alert(org, &Alert::AutoTopUpFailed { reason: reason.to_owned() });
        }
        Ok(())
    }

    /// One round over every org: starts an auto top-up where the balance is
    /// below the threshold (claimed first, so however many replicas run
    /// this, one payment at a time per org), and sends low-balance alerts
    /// (once per fall below the threshold). Answers how many top-ups started.
    ///
    /// # Errors
    /// A database failure.
    pub async fn check_balances(&self) -> Result<usize, BillingError> {
        // Three reads for all orgs; a write only where something changes.
        let org_ids: Vec<String> = db_run!(self.pool, |conn| orgs::table.select(orgs::id).load(conn).await)?;
        let balances = self.ledger.available_balances().await?;
        let mut settings: HashMap<String, SettingsRow> = db_run!(self.pool, |conn| billing_settings::table
            .select((billing_settings::org_id, SettingsRow::as_select()))
            .load::<(String, SettingsRow)>(conn)
            .await)?
        .into_iter()
        .collect();
        let default_alert = self.config.low_balance_alert.units();
        let mut started = 0;
        for id in org_ids {
            let org = OrgId::from_trusted(id);
            let available = balances.get(&org).copied().unwrap_or(Money::ZERO);
            let settings = match settings.remove(org.as_str()) {
                Some(s) => s,
                // Never configured: no auto top-up, the default alert. Its
                // settings row is made only when there is something to claim.
                None if default_alert > 0 && available.units() < default_alert => self.settings(&org).await?,
                None => continue,
            };
            if self.stripe.is_some()
                && settings.auto_top_up
                && settings.payment_method_id.is_some()
                && available.units() < settings.threshold
                && Box::pin(self.top_up(&org, &settings)).await?
            {
                started += 1;
            }
            self.low_balance(&org, &settings, available).await?;
        }
        Ok(started)
    }

    async fn low_balance(&self, org: &OrgId, s: &SettingsRow, available: Money) -> Result<(), BillingError> {
        let threshold = s.low_balance_alert.unwrap_or(self.config.low_balance_alert.units());
        let below = threshold > 0 && available.units() < threshold;
        if below && s.low_balance_alerted_at.is_none() {
            let claimed = db_run!(self.pool, |conn| diesel::update(
                billing_settings::table.find(org.as_str()).filter(billing_settings::low_balance_alerted_at.is_null())
            )
            .set(billing_settings::low_balance_alerted_at.eq(Some(time::now())))
            .execute(conn)
            .await)?;
            if claimed == 1 {
                self.notifier.alert(org, &Alert::LowBalance { available, threshold: Money::from_units(threshold) });
            }
        } else if !below && s.low_balance_alerted_at.is_some() {
            db_run!(self.pool, |conn| diesel::update(billing_settings::table.find(org.as_str()))
                .set(billing_settings::low_balance_alerted_at.eq(None::<NaiveDateTime>))
                .execute(conn)
                .await)?;
        }
        Ok(())
    }

    /// Claims the org's top-up slot and creates one off-session payment.
    async fn top_up(&self, org: &OrgId, s: &SettingsRow) -> Result<bool, BillingError> {
        let now = time::now();
        let stale = now - STALE_CLAIM;
        let claimed = db_run!(self.pool, |conn| diesel::update(
            billing_settings::table
                .find(org.as_str())
                .filter(billing_settings::auto_top_up.eq(true))
                .filter(billing_settings::in_flight_since.is_null().or(billing_settings::in_flight_since.lt(stale)))
        )
        .set((billing_settings::in_flight_since.eq(Some(now)), billing_settings::in_flight_intent.eq(None::<String>)))
        .execute(conn)
        .await)?;
        if claimed != 1 {
            return Ok(false);
        }
        // Read the balance again under the claim: another replica may have
        // topped up (credited, then released its claim) since our first read.
        if self.ledger.balance(org).await?.available.units() >= s.threshold {
            db_run!(self.pool, |conn| diesel::update(billing_settings::table.find(org.as_str()))
                .set(billing_settings::in_flight_since.eq(None::<NaiveDateTime>))
                .execute(conn)
                .await)?;
            return Ok(false);
        }
        let (Some(customer), Some(method)) = (&s.stripe_customer_id, &s.payment_method_id) else { return Ok(false) };
        let cents = s.top_up_amount / NANO_PER_CENT;
        let key = IdempotencyKey::new(format!("auto-top-up:{org}:{}", now.and_utc().timestamp_millis()))
            .map_err(|e| BillingError::Stripe(e.to_string()))?;
        let created = CreatePaymentIntent::new(cents, self.currency()?)
            .customer(customer.clone())
            .payment_method(method.clone())
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .confirm(true)
            .metadata(metadata(&[("org_id", org.as_str()), ("kind", "auto_top_up")]))
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key))
            .send(self.client()?)
            .await;
        match created {
            Ok(intent) => {
                let id = intent.id.to_string();
                db_run!(self.pool, |conn| diesel::update(billing_settings::table.find(org.as_str()))
                    .set(billing_settings::in_flight_intent.eq(Some(&id)))
                    .execute(conn)
                    .await)?;
                tracing::info!(org_id = %org, payment_intent = %id, cents, "auto top-up started");
                if intent.status == stripe_shared::PaymentIntentStatus::Succeeded {
                    // Credited now; the webhook for it will find it done.
                    self.credit_payment(org, &id, intent.amount_received, Some(intent.currency.to_string().as_str()))
                        .await?;
                    self.finish_auto_top_up(org, &id).await?;
                }
                Ok(true)
            }
            // A card refused off-session: off, with the reason, and the org told.
            Err(StripeError::Stripe(api, status)) if status == 402 || status == 400 => {
                let reason = api.code.as_ref().map_or_else(|| "card_error".to_owned(), |c| c.as_str().to_owned());
                self.auto_top_up_failed(org, &reason).await?;
                Ok(false)
            }
            Err(e) => {
                // Stripe unreachable or failing: release the claim, try next round.
                tracing::warn!(org_id = %org, error = %stripe_error(&e), "auto top-up could not be created; will retry");
                db_run!(self.pool, |conn| diesel::update(billing_settings::table.find(org.as_str()))
                    .set(billing_settings::in_flight_since.eq(None::<NaiveDateTime>))
                    .execute(conn)
                    .await)?;
                Ok(false)
            }
        }
    }
}
