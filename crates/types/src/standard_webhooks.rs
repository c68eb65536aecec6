//! Standard Webhooks v1 (<https://www.standardwebhooks.com>): every delivery
//! carries `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! keyed by the base64 bytes after `whsec_` in the endpoint's secret. While
//! a rotated secret's grace period lasts, the header carries one signature
//! per secret, space-separated; a receiver accepts any that verifies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

/// The prefix of a signing secret.
pub const PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 24 random bytes in base64.
///
/// # Errors
/// The system's random source failed.
pub fn new_secret() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 24];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("{PREFIX}{}", STANDARD.encode(bytes)))
}

fn key_of(secret: &str) -> Option<hmac::Key> {
    let bytes = STANDARD.decode(secret.strip_prefix(PREFIX)?).ok()?;
    Some(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// The `v1,<base64>` signature of a message under `secret`; `None` for a
/// secret that is not `whsec_` and base64.
#[must_use]
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = key_of(secret)?;
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(format!("{id}.{timestamp}.").as_bytes());
    ctx.update(body);
    Some(format!("v1,{}", STANDARD.encode(ctx.sign().as_ref())))
}

/// The `webhook-signature` header: one signature per secret.
#[must_use]
pub fn header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().filter_map(|s| sign(s, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// What a receiver checks (the reference libraries do the same): one of
/// the header's `v1` signatures verifies under `secret` (in constant time),
/// and the timestamp is within `tolerance_secs` of `now`.
#[must_use]
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> bool {
    if (now - timestamp).abs() > tolerance_secs {
        return false;
    }
    let Some(key) = key_of(secret) else { return false };
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| STANDARD.decode(sig).is_ok_and(|tag| hmac::verify(&key, &message, &tag).is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_s_example_verifies() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, &sig, 1614265330, 300));
    }

    #[test]
    fn any_change_or_a_stale_timestamp_fails_and_rotation_signs_twice() {
        let (old, new) = (new_secret().unwrap(), new_secret().unwrap());
        assert!(old.starts_with(PREFIX) && old != new);
        let h = header(&[&new, &old], "msg_1", 1_000, b"{}");
        assert_eq!(h.split(' ').count(), 2);
        assert!(verify(&old, "msg_1", 1_000, b"{}", &h, 1_000, 300));
        assert!(verify(&new, "msg_1", 1_000, b"{}", &h, 1_100, 300));
        assert!(!verify(&new, "msg_2", 1_000, b"{}", &h, 1_000, 300));
        assert!(!verify(&new, "msg_1", 1_001, b"{}", &h, 1_000, 300));
        assert!(!verify(&new, "msg_1", 1_000, b"{ }", &h, 1_000, 300));
        assert!(!verify(&new, "msg_1", 1_000, b"{}", &h, 1_301, 300), "stale");
        assert!(!verify(&new_secret().unwrap(), "msg_1", 1_000, b"{}", &h, 1_000, 300));
        assert!(sign("not-a-secret", "msg_1", 1, b"").is_none());
    }
}
