use std::io::Write as _;
use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::{IdentityConfig, IdentityError};

const MIN_LEN: usize = 32;

/// The server's secret: API key secrets are stored as HMAC-SHA256 under it.
/// Its bytes are never printed.
#[derive(Clone)]
pub struct ServerSecret {
    hmac_key: hmac::Key,
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret([redacted])")
    }
}

impl ServerSecret {
    /// A secret from its text (at least 32 characters).
    ///
    /// # Errors
    /// [`IdentityError::ServerSecret`] when too short.
    pub fn from_text(text: &str) -> Result<Self, IdentityError> {
        let text = text.trim();
        if text.len() < MIN_LEN {
            return Err(IdentityError::ServerSecret(format!(
                "must be at least {MIN_LEN} characters (it has {})",
                text.len()
            )));
        }
        Ok(Self { hmac_key: hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes()) })
    }

    /// The configured secret, else the one in `server_secret_file`, which is
    /// generated (256 random bits, file mode 0600) when it does not exist.
    /// Returns whether it was generated.
    ///
    /// # Errors
    /// An unreadable or unwritable file, or a too-short secret.
    pub fn load_or_generate(config: &IdentityConfig) -> Result<(Self, bool), IdentityError> {
        if !config.server_secret.is_empty() {
            return Ok((Self::from_text(config.server_secret.expose())?, false));
        }
        let path = &config.server_secret_file;
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::from_text(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = random_hex(32)?;
                write_private(path, &text)
                    .map_err(|e| IdentityError::ServerSecret(format!("cannot write {}: {e}", path.display())))?;
                Ok((Self::from_text(&text)?, true))
            }
            Err(e) => Err(IdentityError::ServerSecret(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// A 256-bit key for one purpose (`file-links`, …), derived from the
    /// server secret: other crates sign with it without ever holding the
    /// secret, and keys of different purposes are unrelated.
    #[must_use]
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.hmac_key, format!("modelroute-derive:{purpose}").as_bytes());
        let mut key = [0u8; 32];
        for (k, t) in key.iter_mut().zip(tag.as_ref()) {
            *k = *t;
        }
        key
    }

    pub(crate) fn mac(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&self.hmac_key, data)
    }

    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.hmac_key, data, tag).is_ok()
    }
}

/// A new single-use token (sessions, email links, invitations): 256 random
/// bits as 64 hex characters. Only its [`token_hash`] is stored.
pub(crate) fn new_token() -> Result<String, IdentityError> {
    random_hex(32)
}

/// The stored form of a token: SHA-256, hex. A fast hash is enough for
/// 256-bit random tokens (nothing to brute-force), unlike passwords.
pub(crate) fn token_hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> Result<String, IdentityError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::ServerSecret("the system random source failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = std::env::temp_dir().join(format!("mr_secret_{}", random_hex(8).unwrap()));
        let config = IdentityConfig { server_secret_file: dir.join("server_secret"), ..IdentityConfig::default() };
        let (a, generated) = ServerSecret::load_or_generate(&config).unwrap();
        assert!(generated);
        let (b, generated) = ServerSecret::load_or_generate(&config).unwrap();
        assert!(!generated);
        assert_eq!(a.mac(b"x").as_ref(), b.mac(b"x").as_ref());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&config.server_secret_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn short_secret_is_rejected_and_never_printed() {
        assert!(ServerSecret::from_text("short").is_err());
        let s = ServerSecret::from_text(&"a".repeat(32)).unwrap();
        let other = ServerSecret::from_text(&"b".repeat(32)).unwrap();
        assert_eq!(s.derive("file-links"), s.derive("file-links"));
        assert_ne!(s.derive("file-links"), s.derive("webhooks"));
        assert_ne!(s.derive("file-links"), other.derive("file-links"));
        let s = ServerSecret::from_text(&"k".repeat(40)).unwrap();
        assert!(!format!("{s:?}").contains("kkkk"));
    }
}
