//! Percentages written as `"80%"` in the configuration.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A fraction in `[0, 1]`, written `"0%"`…`"100%"`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    pub const fn from_fraction_unchecked(f: f64) -> Self {
        Percent(f)
    }

    pub fn fraction(self) -> f64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let number = s
            .trim()
            .strip_suffix('%')
            .ok_or_else(|| format!("`{s}` is not a percentage: write it like \"80%\""))?;
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a percentage: write it like \"80%\""))?;
        if !(0.0..=100.0).contains(&value) || value.is_nan() {
            return Err(format!(
                "`{s}` is out of range: a percentage must be between 0% and 100%"
            ));
        }
        Ok(Percent(value / 100.0))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0 * 100.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PercentVisitor;
        impl Visitor<'_> for PercentVisitor {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage such as \"80%\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                Percent::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit: write it as \"{v}%\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit: write it as \"{v}%\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit: write it as \"{v}%\""
                )))
            }
        }
        deserializer.deserialize_any(PercentVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Percent::parse("80%").unwrap().fraction(), 0.8);
        assert_eq!(Percent::parse(" 12.5 %").unwrap().fraction(), 0.125);
        assert!(Percent::parse("80").unwrap_err().contains("write it like"));
        assert!(
            Percent::parse("101%")
                .unwrap_err()
                .contains("between 0% and 100%")
        );
        assert!(Percent::parse("-1%").unwrap_err().contains("between"));
        assert!(Percent::parse("abc%").is_err());
    }
}
