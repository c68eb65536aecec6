//! Stripe webhook signatures, checked the way Stripe documents them: the
//! `Stripe-Signature` header is `t=<unix time>,v1=<hex>[,v1=<hex>…]`; a
//! `v1` is HMAC-SHA256 under the endpoint's secret of `"{t}.{payload}"`.
//! The time must be within the tolerance of now (300 s), and one `v1` must
//! match (compared in constant time by ring). Nothing of the payload is
//! trusted before that.

use ring::hmac;

use crate::BillingError;

/// How far the signed time may be from now.
pub const TOLERANCE_SECS: i64 = 300;

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Checks a webhook's signature.
///
/// # Errors
/// [`BillingError::BadSignature`] saying why (malformed, stale, no match).
pub fn verify_signature(payload: &[u8], header: &str, secret: &str, now_unix: i64) -> Result<(), BillingError> {
    let bad = |why: &str| BillingError::BadSignature(why.to_owned());
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.extend(unhex(sig)),
            _ => {}
        }
    }
    let t = timestamp.ok_or_else(|| bad("no timestamp"))?;
    // Checked: a timestamp near i64::MIN or MAX is refused, not overflowed.
    if now_unix.checked_sub(t).and_then(i64::checked_abs).is_none_or(|d| d > TOLERANCE_SECS) {
        return Err(bad("the timestamp is outside the tolerance"));
    }
    if signatures.is_empty() {
        return Err(bad("no v1 signature"));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(payload);
    if signatures.iter().any(|s| hmac::verify(&key, &signed, s).is_ok()) {
        Ok(())
    } else {
        Err(bad("no signature matches"))
    }
}

/// The header Stripe would send for `payload` at `t`.
#[cfg(test)]
fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(payload);
    let tag = hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_for_secret_payload_and_time() {
        let payload = br#"{"id":"evt_1"}"#;
        let header = sign(payload, "whsec_test", 1_000_000);
        verify_signature(payload, &header, "whsec_test", 1_000_000 + 299).unwrap();
        assert!(verify_signature(payload, &header, "whsec_other", 1_000_000).is_err());
        assert!(verify_signature(br#"{"id":"evt_2"}"#, &header, "whsec_test", 1_000_000).is_err());
        assert!(verify_signature(payload, &header, "whsec_test", 1_000_000 + 301).is_err(), "stale");
        assert!(verify_signature(payload, &header, "whsec_test", 1_000_000 - 301).is_err(), "from the future");
        // Several v1 signatures (a rolled secret): any one may match.
        let rolled = format!("{},v1={}", header, "ab".repeat(32));
        verify_signature(payload, &rolled, "whsec_test", 1_000_000).unwrap();
        let extremes = [format!("t={},v1=00", i64::MIN), format!("t={},v1=00", i64::MAX), "t=-1,v1=00".into()];
        for extreme in &extremes {
            assert!(verify_signature(payload, extreme, "whsec_test", 1_000_000).is_err(), "{extreme}");
            assert!(verify_signature(payload, extreme, "whsec_test", i64::MIN).is_err(), "{extreme} at MIN");
            assert!(verify_signature(payload, extreme, "whsec_test", i64::MAX).is_err(), "{extreme} at MAX");
        }
        for garbage in ["", "t=abc,v1=00", "v1=00", "t=1000000"] {
            assert!(verify_signature(payload, garbage, "whsec_test", 1_000_000).is_err(), "{garbage}");
        }
    }
}
