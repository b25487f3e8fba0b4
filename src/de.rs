//! Deserialization helpers shared by the configuration and the kinds' own settings (a leaf: it
//! imports nothing of the crate).
//!
//! - [`duration`]: every duration of the configuration, bounded to a year.
//! - [`strings`]: lists of strings that tolerate unquoted YAML scalars (`command: [true]`,
//!   `[sleep, 5]`): inside a source, serde buffers values before typing them, so `true` or `5`
//!   would otherwise be refused as "not a string".

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

struct Scalar(String);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// `deserialize_with` for a `Vec<String>` that accepts unquoted booleans and numbers.
pub fn strings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;
    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of strings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(Scalar(s)) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(ListVisitor)
}

/// Longest duration the configuration accepts. Anything longer is a typo (`500y` for `500s`),
/// and the bound keeps every `SystemTime + Duration` and every conversion to an API's integer
/// seconds in range.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// `#[serde(with = "crate::de::duration")]`: a humantime duration (`30s`, `5m`, `1h 30m`) of at
/// most [`MAX_DURATION`], for `Duration` and `Option<Duration>` fields. Errors quote the text as
/// written, so it can be found even where the location is only the enclosing source.
pub mod duration {
    use std::time::Duration;

    use serde::de::{Deserialize, Deserializer, Error};

    use super::MAX_DURATION;

    /// A duration field, optional or not.
    pub trait Field: Sized {
        fn from(text: Option<String>) -> Result<Self, String>;
    }

    impl Field for Duration {
        fn from(text: Option<String>) -> Result<Self, String> {
            parse(&text.ok_or("a duration is required, e.g. `30s` or `5m`")?)
        }
    }

    impl Field for Option<Duration> {
        fn from(text: Option<String>) -> Result<Self, String> {
            text.as_deref().map(parse).transpose()
        }
    }

    fn parse(text: &str) -> Result<Duration, String> {
        let d = humantime::parse_duration(text).map_err(|e| {
            format!("expected a duration such as `30s`, `5m` or `1h`, found `{text}` ({e})")
        })?;
        if d > MAX_DURATION {
            return Err(format!("`{text}` is longer than the limit of one year"));
        }
        Ok(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Field>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        T::from(Option::<String>::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}
