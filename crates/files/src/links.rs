//! Signed, expiring download links: `…/v1/files/{id}/content?expires=…&signature=…`,
//! the signature an HMAC-SHA256 of the file id and the expiry under a key
//! derived from the server secret. Anyone holding the link may download the
//! file until it expires — a webhook receiver or a browser, without the
//! API key — and nothing else: the link names one file and no org.

use modelroute_types::FileId;
use ring::hmac;

use crate::FileError;

/// Signs and verifies links.
#[derive(Clone)]
pub struct LinkSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner([redacted])")
    }
}

fn message(id: &FileId, expires: i64) -> String {
    format!("file-link:v1:{id}:{expires}")
}

impl LinkSigner {
    /// A signer with a 256-bit key (the server secret's `file-links` key).
    #[must_use]
    pub fn new(key: &[u8; 32]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, key) }
    }

    /// The signature of a link to `id` that works until `expires` (Unix
    /// seconds), as lowercase hex.
    #[must_use]
    pub fn sign(&self, id: &FileId, expires: i64) -> String {
        hmac::sign(&self.key, message(id, expires).as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks a link's signature, then its expiry against `now` (Unix
    /// seconds).
    ///
    /// # Errors
    /// [`FileError::BadSignature`] for a signature that does not verify (any
    /// change to the id, the expiry or the signature), [`FileError::LinkExpired`]
    /// for a genuine link whose time is up.
    pub fn verify(&self, id: &FileId, expires: i64, signature: &str, now: i64) -> Result<(), FileError> {
        let tag = decode_hex(signature).ok_or(FileError::BadSignature)?;
        hmac::verify(&self.key, message(id, expires).as_bytes(), &tag).map_err(|_| FileError::BadSignature)?;
        if expires < now {
            return Err(FileError::LinkExpired);
        }
        Ok(())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_verifies_until_it_expires_and_any_change_breaks_it() {
        let signer = LinkSigner::new(&[7; 32]);
        let id = FileId::new();
        let sig = signer.sign(&id, 1_000);
        assert!(signer.verify(&id, 1_000, &sig, 999).is_ok());
        assert!(signer.verify(&id, 1_000, &sig, 1_000).is_ok());
        assert!(matches!(signer.verify(&id, 1_000, &sig, 1_001), Err(FileError::LinkExpired)));
        assert!(matches!(signer.verify(&id, 2_000, &sig, 999), Err(FileError::BadSignature)));
        assert!(matches!(signer.verify(&FileId::new(), 1_000, &sig, 999), Err(FileError::BadSignature)));
        let mut flipped = sig.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(matches!(signer.verify(&id, 1_000, &flipped, 999), Err(FileError::BadSignature)));
        assert!(matches!(signer.verify(&id, 1_000, "zz", 999), Err(FileError::BadSignature)));
        assert!(matches!(signer.verify(&id, 1_000, "é".repeat(32).as_str(), 999), Err(FileError::BadSignature)));
        let other = LinkSigner::new(&[8; 32]);
        assert!(matches!(other.verify(&id, 1_000, &sig, 999), Err(FileError::BadSignature)));
    }
}
