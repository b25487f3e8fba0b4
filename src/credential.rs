//! Where a credential comes from: a file, an environment variable, or (only when the config
//! explicitly allows it) the YAML itself.

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// A reference to a credential, resolved each time it is needed so that a rotated file is
/// picked up on the next fetch without a restart.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialRef {
    /// Read from this file; one trailing newline is removed.
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
    /// Written in the configuration. Rejected unless `allow_inline_secrets: true`.
    Inline(String),
}

/// Why a credential could not be read. Never carries the credential itself.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read credential file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("environment variable {name} is not set or not valid UTF-8")]
    Env { name: String },
    #[error("environment variable {name} is empty")]
    EmptyEnv { name: String },
    #[error("{field}: the credential is not usable there ({why})")]
    Unusable { field: String, why: &'static str },
}

impl CredentialRef {
    /// Reads the current value.
    pub fn load(&self) -> Result<SecretString, CredentialError> {
        match self {
            CredentialRef::File(path) => {
                let raw =
                    std::fs::read_to_string(path).map_err(|source| CredentialError::File {
                        path: path.clone(),
                        source,
                    })?;
                let value = strip_one_newline(&raw);
                if value.is_empty() {
                    return Err(CredentialError::EmptyFile { path: path.clone() });
                }
                Ok(SecretString::from(value))
            }
            CredentialRef::Env(name) => {
                let value =
                    std::env::var(name).map_err(|_| CredentialError::Env { name: name.clone() })?;
                if value.is_empty() {
                    return Err(CredentialError::EmptyEnv { name: name.clone() });
                }
                Ok(SecretString::from(value))
            }
            CredentialRef::Inline(value) => Ok(SecretString::from(value.as_str())),
        }
    }

    pub fn is_inline(&self) -> bool {
        matches!(self, CredentialRef::Inline(_))
    }
}

/// Whether a header or parameter name says its value is a credential (`Authorization`,
/// `X-Api-Key`, `client_assertion`, `subject_token`, `password`, …): a literal value under such
/// a name counts as a secret written in the config. Names of a type (`subject_token_type`,
/// `token_type_hint`) do not.
pub fn names_a_secret(name: &str) -> bool {
    const HINTS: [&str; 10] = [
        "auth",
        "token",
        "secret",
        "password",
        "passwd",
        "key",
        "assertion",
        "cookie",
        "credential",
        "signature",
    ];
    let name = name.to_ascii_lowercase();
    // `subject_token_type`, `client_assertion_type`, `token_type_hint` name a kind, not a value.
    let names_a_kind = name.ends_with("type") || name.ends_with("type_hint");
    !names_a_kind && HINTS.iter().any(|hint| name.contains(hint))
}

fn strip_one_newline(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s)
}

impl fmt::Debug for CredentialRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialRef::File(p) => f.debug_tuple("File").field(p).finish(),
            CredentialRef::Env(n) => f.debug_tuple("Env").field(n).finish(),
            CredentialRef::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

/// Accepts `"literal"`, `{ file: PATH }`, `{ env: NAME }` or `{ value: "literal" }`.
impl<'de> Deserialize<'de> for CredentialRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;

        impl<'de> Visitor<'de> for RefVisitor {
            type Value = CredentialRef;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a credential reference: { file: PATH }, { env: NAME } or { value: STRING }",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<CredentialRef, E> {
                Ok(CredentialRef::Inline(v.to_owned()))
            }

            // Unquoted scalars (`X-Version: 2`, `debug: true`) are literal text too.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CredentialRef, E> {
                Ok(CredentialRef::Inline(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CredentialRef, E> {
                Ok(CredentialRef::Inline(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CredentialRef, E> {
                Ok(CredentialRef::Inline(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CredentialRef, E> {
                Ok(CredentialRef::Inline(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CredentialRef, A::Error> {
                let mut found: Option<CredentialRef> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let parsed = match key.as_str() {
                        "file" => CredentialRef::File(PathBuf::from(value)),
                        "env" => CredentialRef::Env(value),
                        "value" => CredentialRef::Inline(value),
                        other => {
                            return Err(de::Error::unknown_field(other, &["file", "env", "value"]));
                        }
                    };
                    if found.replace(parsed).is_some() {
                        return Err(de::Error::custom(
                            "give exactly one of `file`, `env` or `value`",
                        ));
                    }
                }
                found.ok_or_else(|| {
                    de::Error::custom("give exactly one of `file`, `env` or `value`")
                })
            }
        }

        deserializer.deserialize_any(RefVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn file_value_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "abc \n\n").unwrap();
        let got = CredentialRef::File(path.clone()).load().unwrap();
        assert_eq!(got.expose_secret(), "abc \n");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            CredentialRef::File(path).load(),
            Err(CredentialError::EmptyFile { .. })
        ));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = CredentialRef::File("/nonexistent/cred".into())
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cred"), "{err}");
    }

    #[test]
    fn credential_names_but_not_type_names() {
        for name in [
            "Authorization",
            "X-Api-Key",
            "client_assertion",
            "subject_token",
            "PASSWORD",
        ] {
            assert!(names_a_secret(name), "{name}");
        }
        for name in [
            "tenant",
            "subject_token_type",
            "client_assertion_type",
            "token_type_hint",
            "X-Request-Source",
        ] {
            assert!(!names_a_secret(name), "{name}");
        }
    }

    #[test]
    fn debug_hides_inline_values() {
        assert_eq!(
            format!("{:?}", CredentialRef::Inline("hunter2".into())),
            "Inline(<redacted>)"
        );
    }
}
