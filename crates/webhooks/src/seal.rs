//! Endpoint secrets at rest: AES-256-GCM under a key derived from the
//! server secret, a random nonce per seal, stored as base64(nonce ‖
//! ciphertext ‖ tag). A database backup alone does not reveal them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::WebhookError;

/// Seals and opens secrets.
pub(crate) struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Self, WebhookError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| WebhookError::Sealed("bad key"))?;
        Ok(Self { key: LessSafeKey::new(key) })
    }

    /// `aad` binds the sealed value to its row (the endpoint id).
    pub(crate) fn seal(&self, plain: &str, aad: &str) -> Result<String, WebhookError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| WebhookError::Sealed("no randomness"))?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| WebhookError::Sealed("seal failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(STANDARD.encode(out))
    }

    pub(crate) fn open(&self, sealed: &str, aad: &str) -> Result<String, WebhookError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| WebhookError::Sealed("not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(WebhookError::Sealed("too short"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| WebhookError::Sealed("bad nonce"))?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| WebhookError::Sealed("does not open"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| WebhookError::Sealed("not text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_what_it_sealed_only_for_the_same_row_and_key() {
        let s = Sealer::new(&[1; 32]).unwrap();
        let sealed = s.seal("whsec_abc", "we_1").unwrap();
        assert!(!sealed.contains("whsec"));
        assert_ne!(sealed, s.seal("whsec_abc", "we_1").unwrap(), "a fresh nonce each time");
        assert_eq!(s.open(&sealed, "we_1").unwrap(), "whsec_abc");
        assert!(s.open(&sealed, "we_2").is_err());
        assert!(Sealer::new(&[2; 32]).unwrap().open(&sealed, "we_1").is_err());
        assert!(s.open("AAAA", "we_1").is_err());
    }
}
