//! Each org's routing preferences (policy and price ceilings) and its
//! fallback models, stored in `org_routing` and cached in-process so that
//! admission costs no extra database round trip. A change made through this
//! process is seen at once; other replicas see it within [`CACHE_TTL`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::org_routing;
use modelroute_db::{DbPool, db_run};
use modelroute_routing::{Policy, Preferences};
use modelroute_types::{Money, OrgId, PricePerMTok, time};
use serde::{Deserialize, Serialize};

use crate::ExecutionError;

/// How long a cached org's preferences are trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Per model (its public slug), the models to try in order when it cannot
/// serve: OpenRouter's `models`, LiteLLM's fallbacks, as an org's default.
pub type Fallbacks = BTreeMap<String, Vec<String>>;

/// The most fallback models one model (or one request) may name.
pub const MAX_FALLBACKS: usize = 5;

/// An org's routing settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrgRouting {
    /// What routing ranks and filters by.
    pub preferences: Preferences,
    /// The org's fallback models.
    pub fallbacks: Arc<Fallbacks>,
}

/// What one request asks of routing, on top of its org's preferences: it
/// may choose the policy, and may lower the ceilings but never raise them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestPreferences {
    /// The ordering for this request.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// A lower prompt-price ceiling for this request.
    #[serde(default)]
    pub max_input_price: Option<PricePerMTok>,
    /// A lower output-price ceiling for this request.
    #[serde(default)]
    pub max_output_price: Option<PricePerMTok>,
}

impl RequestPreferences {
    /// The org's preferences narrowed by this request's.
    #[must_use]
    pub fn apply_to(self, org: Preferences) -> Preferences {
        let lower = |a: Option<PricePerMTok>, b: Option<PricePerMTok>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Preferences {
            policy: self.policy.unwrap_or(org.policy),
            max_input_price: lower(org.max_input_price, self.max_input_price),
            max_output_price: lower(org.max_output_price, self.max_output_price),
        }
    }
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = org_routing)]
#[diesel(treat_none_as_null = true)]
struct Row {
    org_id: String,
    policy: String,
    max_input_price: Option<i64>,
    max_output_price: Option<i64>,
    updated_at: chrono::NaiveDateTime,
    fallbacks: Option<String>,
}

/// The stored policy back; an unknown one is an error, never `cheapest`.
fn policy_of(s: &str) -> Result<Policy, modelroute_db::DbError> {
    [Policy::Cheapest, Policy::Fastest, Policy::Balanced]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| modelroute_db::DbError::unknown("routing policy", s))
}

fn price(units: Option<i64>) -> Option<PricePerMTok> {
    units.map(|u| PricePerMTok::new(Money::from_units(u)))
}

/// The store and its cache.
#[derive(Debug, Default)]
pub(crate) struct PreferenceStore {
    cache: Mutex<HashMap<String, (Instant, OrgRouting)>>,
}

impl PreferenceStore {
    fn cached(&self, org: &OrgId) -> Option<OrgRouting> {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(org.as_str()).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, p)| p.clone())
    }

    fn remember(&self, org: &OrgId, routing: OrgRouting) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.insert(org.as_str().to_owned(), (Instant::now(), routing));
    }

    /// The org's preferences (defaults when it set none).
    pub(crate) async fn get(&self, pool: &DbPool, org: &OrgId) -> Result<Preferences, ExecutionError> {
        Ok(self.routing(pool, org).await?.preferences)
    }

    /// The org's routing settings (defaults when it set none).
    pub(crate) async fn routing(&self, pool: &DbPool, org: &OrgId) -> Result<OrgRouting, ExecutionError> {
        if let Some(p) = self.cached(org) {
            return Ok(p);
        }
        let row: Option<Row> = db_run!(pool, |conn| org_routing::table
            .find(org.as_str())
            .select(Row::as_select())
            .first(conn)
            .await
            .optional())?;
        let routing = match row {
            None => OrgRouting::default(),
            Some(r) => OrgRouting {
                preferences: Preferences {
                    policy: policy_of(&r.policy)?,
                    max_input_price: price(r.max_input_price),
                    max_output_price: price(r.max_output_price),
                },
                fallbacks: Arc::new(match r.fallbacks.as_deref() {
                    None => Fallbacks::new(),
                    Some(json) => serde_json::from_str(json)
                        .map_err(|_| modelroute_db::DbError::unknown("fallback models", json))?,
                }),
            },
        };
        self.remember(org, routing.clone());
        Ok(routing)
    }

    /// Replaces the org's routing settings.
    pub(crate) async fn set(&self, pool: &DbPool, org: &OrgId, routing: OrgRouting) -> Result<(), ExecutionError> {
        let p = routing.preferences;
        let row = Row {
            org_id: org.as_str().to_owned(),
            policy: p.policy.as_str().to_owned(),
            max_input_price: p.max_input_price.map(|m| m.per_million().units()),
            max_output_price: p.max_output_price.map(|m| m.per_million().units()),
            updated_at: time::now(),
            fallbacks: (!routing.fallbacks.is_empty())
                .then(|| serde_json::to_string(&*routing.fallbacks).unwrap_or_default()),
        };
        db_run!(pool, |conn| diesel::insert_into(org_routing::table)
            .values(&row)
            .on_conflict(org_routing::org_id)
            .do_update()
            .set(&row)
            .execute(conn)
            .await)?;
        self.remember(org, routing);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use modelroute_routing::Policy;

    #[test]
    fn a_stored_policy_reads_back_and_an_unknown_one_is_an_error() {
        for p in [Policy::Cheapest, Policy::Fastest, Policy::Balanced] {
            assert_eq!(super::policy_of(p.as_str()).ok(), Some(p));
        }
        // Never quietly `cheapest`.
        assert!(super::policy_of("smartest").is_err());
    }
}
