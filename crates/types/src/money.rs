//! Money in integer minor units. Never floating point.
//!
//! The unit is the **nano-dollar** (1 USD = 1,000,000,000 units): fine enough
//! that a price of $0.01 per million tokens is 10 units per token, and an
//! `i64` still holds ±9.2 billion dollars.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units per US dollar.
pub const UNITS_PER_USD: i64 = 1_000_000_000;
const DECIMALS: usize = 9;

/// An amount of money in nano-dollars. May be negative (ledger postings are signed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// A decimal amount that could not be parsed or does not fit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    /// Not a decimal number like `12.50`.
    #[error("`{0}` is not a decimal amount of dollars like `12.50`")]
    Malformed(String),
    /// More than nine decimal places.
    #[error("`{0}` has more than 9 decimal places")]
    TooPrecise(String),
    /// Too large for the ledger.
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl Money {
    /// Zero.
    pub const ZERO: Self = Self(0);

    /// An amount from nano-dollars.
    #[must_use]
    pub const fn from_units(units: i64) -> Self {
        Self(units)
    }

    /// The amount in nano-dollars.
    #[must_use]
    pub const fn units(self) -> i64 {
        self.0
    }

    /// Whole dollars.
    #[must_use]
    pub const fn from_usd(dollars: i64) -> Self {
        Self(dollars * UNITS_PER_USD)
    }

    /// `self + other`, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, other: Self) -> Option<Self> {
        match self.0.checked_add(other.0) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self - other`, or `None` on overflow.
    #[must_use]
    pub const fn checked_sub(self, other: Self) -> Option<Self> {
        match self.0.checked_sub(other.0) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// Whether the amount is greater than zero.
    #[must_use]
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// The amount as a dollar string with all nine decimals, e.g. `"1.250000000"`.
    #[must_use]
    pub fn to_usd_string(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = UNITS_PER_USD.unsigned_abs();
        format!("{sign}{}.{:09}", abs / per, abs % per)
    }
}

impl std::ops::Sub for Money {
    type Output = Self;
    /// Subtraction that saturates (for tests and reports; the ledger uses checked arithmetic).
    fn sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.to_usd_string())
    }
}

/// Parses `12`, `12.5`, `$0.000001`, `-3.10` into nano-dollars, exactly.
impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(input: &str) -> Result<Self, MoneyError> {
        let malformed = || MoneyError::Malformed(input.chars().take(40).collect());
        let s = input.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let s = s.strip_prefix('$').unwrap_or(s);
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(malformed());
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        if frac.len() > DECIMALS {
            return Err(MoneyError::TooPrecise(input.to_owned()));
        }
        let overflow = || MoneyError::Overflow(input.to_owned());
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| overflow())? };
        let mut frac_units: i64 = 0;
        for b in frac.bytes().chain(std::iter::repeat(b'0')).take(DECIMALS) {
            frac_units = frac_units * 10 + i64::from(b - b'0');
        }
        let units = whole.checked_mul(UNITS_PER_USD).and_then(|w| w.checked_add(frac_units)).ok_or_else(overflow)?;
        Ok(Self(if negative { -units } else { units }))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i64::deserialize(d).map(Self)
    }
}

/// A price per million units (tokens), in nano-dollars per million.
///
/// In configuration it is written as a dollar string: `"0.15"` means
/// $0.15 per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PricePerMTok(Money);

impl PricePerMTok {
    /// A price of `money` per million units.
    #[must_use]
    pub const fn new(money: Money) -> Self {
        Self(money)
    }

    /// The price of a million units.
    #[must_use]
    pub const fn per_million(self) -> Money {
        self.0
    }

    /// The cost of `units` units, rounded up to the next nano-dollar so that
    /// a non-zero usage is never free. `None` on overflow.
    #[must_use]
    pub fn cost(self, units: u64) -> Option<Money> {
        let total = i128::from(units).checked_mul(i128::from(self.0.units()))?;
        let rounded_up = (total + 999_999).div_euclid(1_000_000);
        i64::try_from(rounded_up).ok().map(Money::from_units)
    }
}

impl Serialize for PricePerMTok {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_usd_string())
    }
}

/// Deserializes a dollar amount written as a decimal string (`"0.15"`) or a
/// whole number (`25`, as environment variables arrive). Floats are refused:
/// they cannot represent most prices exactly.
///
/// # Errors
/// A malformed, too precise or float amount.
pub fn deserialize_usd<'de, D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
    struct Usd;
    impl serde::de::Visitor<'_> for Usd {
        type Value = Money;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a dollar amount as a string like \"12.50\" or a whole number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
            v.parse().map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
            v.checked_mul(UNITS_PER_USD).map(Money).ok_or_else(|| E::custom(MoneyError::Overflow(v.to_string())))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
            i64::try_from(v).map_err(|_| E::custom(MoneyError::Overflow(v.to_string()))).and_then(|v| self.visit_i64(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Money, E> {
            Err(E::custom(format!("write the amount {v} as a string (\"{v}\"): floats are not exact")))
        }
    }
    d.deserialize_any(Usd)
}

impl<'de> Deserialize<'de> for PricePerMTok {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let money = deserialize_usd(d)?;
        if money.units() < 0 {
            return Err(serde::de::Error::custom("a price cannot be negative"));
        }
        Ok(Self(money))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!("1".parse::<Money>().unwrap().units(), 1_000_000_000);
        assert_eq!("$0.15".parse::<Money>().unwrap().units(), 150_000_000);
        assert_eq!("0.000000001".parse::<Money>().unwrap().units(), 1);
        assert_eq!("-2.5".parse::<Money>().unwrap().units(), -2_500_000_000);
        assert_eq!(".5".parse::<Money>().unwrap().units(), 500_000_000);
        assert!(matches!("0.0000000001".parse::<Money>(), Err(MoneyError::TooPrecise(_))));
        assert!(matches!("1e3".parse::<Money>(), Err(MoneyError::Malformed(_))));
        assert!(matches!("".parse::<Money>(), Err(MoneyError::Malformed(_))));
        assert!(matches!("99999999999".parse::<Money>(), Err(MoneyError::Overflow(_))));
    }

    #[test]
    fn formats_all_decimals() {
        assert_eq!(Money::from_units(1_250_000_000).to_usd_string(), "1.250000000");
        assert_eq!(Money::from_units(-1).to_usd_string(), "-0.000000001");
        assert_eq!(Money::from_usd(3).to_string(), "$3.000000000");
    }

    #[test]
    fn config_amounts_accept_strings_and_whole_numbers_not_floats() {
        let p: PricePerMTok = serde_json::from_str("\"0.15\"").unwrap();
        assert_eq!(p.per_million().units(), 150_000_000);
        let p: PricePerMTok = serde_json::from_str("2").unwrap();
        assert_eq!(p.per_million(), Money::from_usd(2));
        assert!(serde_json::from_str::<PricePerMTok>("0.15").is_err());
        assert!(serde_json::from_str::<PricePerMTok>("\"-1\"").is_err());
    }

    #[test]
    fn price_rounds_up_and_never_free() {
        let p = PricePerMTok::new("0.15".parse().unwrap()); // 150 nano-$ per token
        assert_eq!(p.cost(1).unwrap().units(), 150);
        assert_eq!(p.cost(1_000_000).unwrap().units(), 150_000_000);
        let tiny = PricePerMTok::new(Money::from_units(1)); // 1 nano-$ per million
        assert_eq!(tiny.cost(1).unwrap().units(), 1);
        assert_eq!(tiny.cost(0).unwrap().units(), 0);
        assert!(PricePerMTok::new(Money::from_units(i64::MAX)).cost(u64::MAX).is_none());
    }
}

/// `#[serde(with = "modelroute_types::usd_string")]`: a dollar amount in
/// configuration, written back as a decimal string (`"10.000000000"`) so
/// that printed configuration reads back to the same amount.
pub mod usd_string {
    use serde::{Deserializer, Serializer};

    use super::Money;

    /// As a decimal string of dollars.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&m.to_usd_string())
    }

    /// From `"12.50"` or a whole number of dollars.
    ///
    /// # Errors
    /// A malformed, too precise or float amount.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        super::deserialize_usd(d)
    }
}
