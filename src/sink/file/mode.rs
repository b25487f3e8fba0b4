//! File permission bits written as an octal string (`"0440"`).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Unix permission bits. Written as a quoted octal string because YAML 1.1 and 1.2 disagree on
/// what an unquoted `0440` means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl fmt::Debug for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an octal mode as a quoted string, such as \"0440\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
                let bits = u32::from_str_radix(v.trim_start_matches("0o"), 8).map_err(|_| {
                    E::custom(format!("`{v}` is not an octal mode such as \"0440\""))
                })?;
                if bits > 0o7777 {
                    return Err(E::custom(format!("`{v}` is larger than 07777")));
                }
                if bits & 0o400 == 0 {
                    return Err(E::custom(format!(
                        "mode `{v}` does not let the owner read the token"
                    )));
                }
                Ok(FileMode(bits))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
                Err(E::custom(format!(
                    "write the mode as a quoted octal string, for example \"0{v}\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
                Err(E::custom(format!(
                    "write the mode as a quoted octal string, for example \"0{v}\""
                )))
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}
