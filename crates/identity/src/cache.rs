//! Verified API keys, cached briefly so that the request path costs no
//! database round trip: an entry holds the key's stored MAC and what it
//! grants. The presented secret is still checked against the MAC on every
//! request (constant time); only the lookup is saved. A revocation through
//! this process removes the entry at once; other replicas drop theirs
//! within the TTL (`[identity] key_cache_ttl_secs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use modelroute_types::{ApiKeyId, OrgId};

use crate::Principal;

/// One verified key.
#[derive(Clone, Debug)]
pub(crate) struct CachedKey {
    /// The stored HMAC of the key's secret.
    pub(crate) tag: Vec<u8>,
    /// After rotations: each earlier secret's HMAC still within its grace, and until when it works.
    pub(crate) previous: Vec<(Vec<u8>, NaiveDateTime)>,
    /// What the key grants.
    pub(crate) principal: Principal,
    /// When the key expires, if ever.
    pub(crate) expires_at: Option<NaiveDateTime>,
    /// The `last_used_at` last written (or read).
    pub(crate) last_used_at: Option<NaiveDateTime>,
    cached_at: Instant,
}

/// Keys by public id.
#[derive(Debug)]
pub(crate) struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, CachedKey>>,
}

/// Entries kept at most; beyond it the cache is cleared (keys are re-read).
const MAX_ENTRIES: usize = 100_000;

impl KeyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::default() }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedKey>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The fresh entry for `public_id`, if any.
    pub(crate) fn get(&self, public_id: &str) -> Option<CachedKey> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries();
        entries.get(public_id).filter(|c| c.cached_at.elapsed() < self.ttl).cloned()
    }

    pub(crate) fn insert(
        &self,
        public_id: &str,
        tag: Vec<u8>,
        previous: Vec<(Vec<u8>, NaiveDateTime)>,
        principal: Principal,
        expires_at: Option<NaiveDateTime>,
        last_used_at: Option<NaiveDateTime>,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        let entry = CachedKey { tag, previous, principal, expires_at, last_used_at, cached_at: Instant::now() };
        entries.insert(public_id.to_owned(), entry);
    }

    /// Records that `last_used_at` was written for the key.
    pub(crate) fn touched(&self, public_id: &str, at: NaiveDateTime) {
        if let Some(e) = self.entries().get_mut(public_id) {
            e.last_used_at = Some(at);
        }
    }

    /// Forgets the key (revoked or rotated).
    /// Drops every key of `org` (its restriction changed).
    pub(crate) fn forget_org(&self, org: &OrgId) {
        self.entries().retain(|_, e| &e.principal.org_id != org);
    }

    pub(crate) fn forget(&self, key: &ApiKeyId) {
        self.entries().retain(|_, e| &e.principal.api_key_id != key);
    }
}
