//! Sliding-window rate limits: at most `limit` admissions per `window` for
//! a key (an API key, an org, a client IP), counted over the exact window
//! that ends now — no burst at a window boundary.
//!
//! Two backends behind one enum: in-process (the embedded default: exact
//! per process) and Redis (production: one atomic script per check, on the
//! Redis server's clock, so any number of replicas share one count). When
//! Redis cannot be reached the check fails open or closed, as configured,
//! and says so in the log (at most every 10 seconds).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_redis::redis::Script;
use serde::{Deserialize, Serialize};

/// The `[identity.rate_limits]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `memory` (one process) or `redis` (shared by all replicas).
    pub backend: LimitBackend,
    /// The Redis URL when `backend = "redis"`.
    pub redis_url: String,
    /// Prefix of every Redis key (several deployments can share a Redis).
    pub key_prefix: String,
    /// When Redis cannot be reached: admit (`true`) or refuse with 503.
    pub fail_open: bool,
    /// Requests per minute per API key (0: unlimited).
    pub per_key_per_minute: u32,
    /// Requests per minute per org, all keys together (0: unlimited).
    pub per_org_per_minute: u32,
    /// Requests per minute per client IP to the sign-up, login and
    /// password-reset endpoints (0: unlimited).
    pub per_ip_auth_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            backend: LimitBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "mr:rl:".into(),
            fail_open: true,
            per_key_per_minute: 600,
            per_org_per_minute: 3_000,
            per_ip_auth_per_minute: 20,
        }
    }
}

/// Where counts live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitBackend {
    /// In this process.
    #[default]
    Memory,
    /// In Redis.
    Redis,
}

/// The answer to one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Admitted?
    pub allowed: bool,
    /// The limit checked.
    pub limit: u32,
    /// Admissions left in the window after this one.
    pub remaining: u32,
    /// When refused: how long until one admission frees up.
    pub retry_after: Duration,
}

/// The limiter cannot decide (Redis unreachable and failing closed).
#[derive(Debug, thiserror::Error)]
#[error("the rate limiter is unavailable")]
pub struct LimiterUnavailable;

/// A rate limiter.
#[derive(Debug)]
pub enum RateLimiter {
    /// Counts in this process.
    Memory(MemoryLimiter),
    /// Counts in Redis.
    Redis(Box<RedisLimiter>),
}

impl RateLimiter {
    /// The limiter `config` asks for.
    ///
    /// # Errors
    /// An invalid Redis URL.
    pub fn from_config(config: &RateLimitConfig) -> Result<Self, String> {
        Ok(match config.backend {
            LimitBackend::Memory => Self::Memory(MemoryLimiter::default()),
            LimitBackend::Redis => Self::Redis(Box::new(RedisLimiter::new(config)?)),
        })
    }

    /// Admits one request for `key` if fewer than `limit` were admitted in
    /// the last `window`.
    ///
    /// # Errors
    /// [`LimiterUnavailable`] when Redis fails and the limiter fails closed.
    pub async fn check(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, LimiterUnavailable> {
        if limit == 0 {
            return Ok(Decision { allowed: true, limit, remaining: u32::MAX, retry_after: Duration::ZERO });
        }
        match self {
            Self::Memory(m) => Ok(m.check(key, limit, window, Instant::now())),
            Self::Redis(r) => r.check(key, limit, window).await,
        }
    }
}

/// In-process sliding logs.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    logs: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl MemoryLimiter {
    fn check(&self, key: &str, limit: u32, window: Duration, now: Instant) -> Decision {
        let mut logs = self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if logs.len() > 100_000 {
            logs.retain(|_, log| log.back().is_some_and(|t| now.saturating_duration_since(*t) < window));
        }
        let log = logs.entry(key.to_owned()).or_default();
        while log.front().is_some_and(|t| now.saturating_duration_since(*t) >= window) {
            log.pop_front();
        }
        let count = u32::try_from(log.len()).unwrap_or(u32::MAX);
        if count < limit {
            log.push_back(now);
            return Decision { allowed: true, limit, remaining: limit - count - 1, retry_after: Duration::ZERO };
        }
        let oldest = log.front().copied().unwrap_or(now);
        let retry_after = window.saturating_sub(now.saturating_duration_since(oldest));
        Decision { allowed: false, limit, remaining: 0, retry_after }
    }
}

/// The check, atomically, on the Redis server's clock: drop entries older
/// than the window, count, and add this request when under the limit;
/// else answer when the oldest entry leaves the window.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, window - (now - tonumber(oldest[2]))}
";

/// Sliding logs in Redis.
pub struct RedisLimiter {
    pool: deadpool_redis::Pool,
    script: Script,
    prefix: String,
    fail_open: bool,
    last_warned: AtomicU64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter").field("prefix", &self.prefix).field("fail_open", &self.fail_open).finish()
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RedisLimiter {
    fn new(config: &RateLimitConfig) -> Result<Self, String> {
        let pool = deadpool_redis::Config::from_url(config.redis_url.clone())
            .builder()
            .map_err(|e| format!("rate_limits.redis_url: {e}"))?
            .max_size(32)
            .wait_timeout(Some(Duration::from_millis(500)))
            .create_timeout(Some(Duration::from_millis(500)))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("rate_limits.redis_url: {e}"))?;
        Ok(Self {
            pool,
            script: Script::new(SCRIPT),
            prefix: config.key_prefix.clone(),
            fail_open: config.fail_open,
            last_warned: AtomicU64::new(0),
        })
    }

    async fn check(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, LimiterUnavailable> {
        let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
        let member = format!("{:016x}", fastrand_u64());
        let answer: Result<(i64, i64, i64), String> = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            let mut invocation = self.script.key(format!("{}{key}", self.prefix));
            invocation.arg(window_us).arg(limit).arg(member);
            tokio::time::timeout(Duration::from_millis(500), invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
        }
        .await;
        match answer {
            Ok((allowed, remaining, retry_us)) => Ok(Decision {
                allowed: allowed == 1,
                limit,
                remaining: u32::try_from(remaining).unwrap_or(0),
                retry_after: Duration::from_micros(u64::try_from(retry_us).unwrap_or(0)),
            }),
            Err(e) => {
                let now = unix_secs();
                let last = self.last_warned.load(Ordering::Relaxed);
                if now >= last + 10
                    && self.last_warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    let policy = if self.fail_open {
                        "admitting requests unchecked (fail open)"
                    } else {
                        "refusing requests (fail closed)"
                    };
                    tracing::warn!(error = %e, "rate limiter: Redis unavailable; {policy}");
                }
                if self.fail_open {
                    Ok(Decision { allowed: true, limit, remaining: limit, retry_after: Duration::ZERO })
                } else {
                    Err(LimiterUnavailable)
                }
            }
        }
    }
}

/// A random u64 from the system source (members of one key must differ).
fn fastrand_u64() -> u64 {
    let mut buf = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides() {
        let m = MemoryLimiter::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        for i in 0..3 {
            let d = m.check("k", 3, w, t0 + Duration::from_secs(i));
            assert!(d.allowed && d.remaining == 2 - u32::try_from(i).unwrap());
        }
        let refused = m.check("k", 3, w, t0 + Duration::from_secs(10));
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(50), "until the first leaves the window");
        assert!(m.check("other", 3, w, t0 + Duration::from_secs(10)).allowed, "keys are separate");
        assert!(m.check("k", 3, w, t0 + Duration::from_secs(60)).allowed, "the first left the window");
        assert!(!m.check("k", 3, w, t0 + Duration::from_secs(60)).allowed);
    }
}
