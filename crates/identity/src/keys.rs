//! The API key token format.
//!
//! `mr_<public id: 12>_<secret: 32><checksum: 6>`, all base62, 54 characters:
//! a fixed prefix that secret scanners can match, a public id to find the
//! record, ~190 bits of secret, and a CRC32 checksum (like GitHub's tokens)
//! so a mistyped or truncated key is rejected before any database lookup.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::IdentityError;

const PREFIX: &str = "mr_";
const PUBLIC_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
const TOKEN_LEN: usize = PREFIX.len() + PUBLIC_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A parsed, checksum-valid API key token. Its secret never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyToken {
    public_id: String,
    secret: String,
}

impl fmt::Debug for ApiKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyToken({}{}_…)", PREFIX, self.public_id)
    }
}

impl ApiKeyToken {
    /// A new random token.
    ///
    /// # Errors
    /// The system random source failed.
    pub fn generate() -> Result<Self, IdentityError> {
        Ok(Self { public_id: random_base62(PUBLIC_LEN)?, secret: random_base62(SECRET_LEN)? })
    }

    /// Parses and checks a presented token without touching the database.
    ///
    /// # Errors
    /// [`IdentityError::InvalidApiKey`] for anything malformed.
    pub fn parse(token: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::InvalidApiKey;
        if token.len() != TOKEN_LEN || !token.starts_with(PREFIX) {
            return Err(bad());
        }
        let body_end = TOKEN_LEN - CHECKSUM_LEN;
        let (body, checksum) = (token.get(..body_end).ok_or_else(bad)?, token.get(body_end..).ok_or_else(bad)?);
        if checksum != crc_base62(body) {
            return Err(bad());
        }
        let rest = body.get(PREFIX.len()..).ok_or_else(bad)?;
        let (public_id, secret) = rest.split_once('_').ok_or_else(bad)?;
        let all_base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
        if public_id.len() != PUBLIC_LEN || secret.len() != SECRET_LEN || !all_base62(public_id) || !all_base62(secret)
        {
            return Err(bad());
        }
        Ok(Self { public_id: public_id.to_owned(), secret: secret.to_owned() })
    }

    /// A new secret for an existing public id (rotation).
    ///
    /// # Errors
    /// The system random source failing.
    pub fn with_public_id(public_id: &str) -> Result<Self, IdentityError> {
        Ok(Self { public_id: public_id.to_owned(), secret: random_base62(SECRET_LEN)? })
    }

    /// The public part, stored in clear and shown in listings (`mr_XXXXXXXXXXXX`).
    #[must_use]
    pub fn public_id(&self) -> &str {
        &self.public_id
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The same public id with another (well-formed) secret: a forgery, for tests.
    #[cfg(test)]
    pub(crate) fn with_other_secret(&self) -> Self {
        let other = if self.secret.starts_with('A') { "B" } else { "A" };
        Self { public_id: self.public_id.clone(), secret: other.repeat(SECRET_LEN) }
    }

    /// The full token text. Show it once, at creation; never log it.
    #[must_use]
    pub fn reveal(&self) -> String {
        let body = format!("{PREFIX}{}_{}", self.public_id, self.secret);
        let checksum = crc_base62(&body);
        body + &checksum
    }
}

fn random_base62(n: usize) -> Result<String, IdentityError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill(&mut buf).map_err(|_| IdentityError::ServerSecret("the system random source failed".into()))?;
        // Rejection sampling keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == n {
                break;
            }
            if let Some(c) = BASE62.get(usize::from(*b % 62)) {
                out.push(char::from(*c));
            }
        }
    }
    Ok(out)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFF_u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

fn crc_base62(body: &str) -> String {
    let mut n = crc32(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        if let Some(c) = BASE62.get(usize::try_from(n % 62).unwrap_or_default()) {
            *slot = *c;
        }
        n /= 62;
    }
    out.iter().map(|b| char::from(*b)).collect()
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Run models (`/v1/chat/completions`, `/v1/executions`).
    Execute,
    /// Read executions, usage and balances.
    Read,
    /// Manage keys, projects and billing.
    Manage,
}

impl Scope {
    /// The scope's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::Read => "read",
            Self::Manage => "manage",
        }
    }
}

impl FromStr for Scope {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        match s {
            "execute" => Ok(Self::Execute),
            "read" => Ok(Self::Read),
            "manage" => Ok(Self::Manage),
            other => Err(IdentityError::InvalidInput {
                field: "scopes",
                message: format!(
                    "unknown scope `{}` (expected execute, read or manage)",
                    other.chars().take(32).collect::<String>()
                ),
            }),
        }
    }
}

/// A set of scopes; stored as space-separated names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    /// Every scope.
    #[must_use]
    pub fn all() -> Self {
        Self([Scope::Execute, Scope::Read, Scope::Manage].into_iter().collect())
    }

    /// Whether `scope` is included.
    #[must_use]
    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    /// The scopes in order.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl FromStr for Scopes {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        s.split([' ', ',']).filter(|p| !p.is_empty()).map(str::parse).collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|s| s.as_str()).collect();
        f.write_str(&names.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_has_the_documented_shape() {
        let t = ApiKeyToken::generate().unwrap();
        let text = t.reveal();
        assert_eq!(text.len(), 54);
        assert!(text.starts_with("mr_"));
        assert_eq!(ApiKeyToken::parse(&text).unwrap(), t);
        assert!(!format!("{t:?}").contains(t.secret()));
    }

    #[test]
    fn any_single_character_change_is_rejected_offline() {
        let text = ApiKeyToken::generate().unwrap().reveal();
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            let b = bytes.get_mut(i).unwrap();
            *b = if *b == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != text {
                assert!(ApiKeyToken::parse(&changed).is_err(), "position {i} accepted");
            }
        }
        assert!(ApiKeyToken::parse(&text[..53]).is_err());
        assert!(ApiKeyToken::parse("").is_err());
        assert!(ApiKeyToken::parse("sk-proj-abc").is_err());
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn scopes_parse() {
        let s: Scopes = "execute read".parse().unwrap();
        assert!(s.contains(Scope::Execute) && !s.contains(Scope::Manage));
        assert_eq!(s.to_string(), "execute read");
        assert!("execute root".parse::<Scopes>().is_err());
    }
}
