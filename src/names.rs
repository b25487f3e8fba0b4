//! The names that end up in file names, Kubernetes object names, environment variables and
//! metric labels, and the rule each one follows. A leaf: checked here once, relied on by the
//! configuration, the sources and the sinks alike.

use std::borrow::Borrow;
use std::fmt;

/// Longest source name (it ends up in file names and metric labels).
pub const MAX_SOURCE_NAME: usize = 63;

/// Longest instance (tenant) id.
const MAX_INSTANCE_ID: usize = 128;

/// Whether `s` has 1 to `max` characters, the first accepted by `first` and all by `rest`.
pub fn fits(
    s: &str,
    max: usize,
    first: impl Fn(char) -> bool,
    rest: impl Fn(char) -> bool,
) -> bool {
    !s.is_empty() && s.len() <= max && s.starts_with(first) && s.chars().all(rest)
}

/// A source name: 1–63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn check_source_name(name: &str) -> Result<(), String> {
    let valid = fits(
        name,
        MAX_SOURCE_NAME,
        |c| c.is_ascii_alphanumeric(),
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
    );
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1-{MAX_SOURCE_NAME} letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        ))
    }
}

/// An RFC 1123 subdomain, as Kubernetes wants for Secret and ServiceAccount names.
pub fn is_dns_subdomain(s: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    fits(s, 253, alphanumeric, |c| {
        alphanumeric(c) || c == '-' || c == '.'
    }) && s.ends_with(alphanumeric)
}

/// An RFC 1123 label, as Kubernetes wants for namespace names.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

/// A key of a Secret's `data`: `[-._a-zA-Z0-9]+`.
pub fn is_config_key(s: &str) -> bool {
    fits(
        s,
        253,
        |_| true,
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
    )
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    fits(
        name,
        usize::MAX,
        |c| c.is_ascii_alphabetic() || c == '_',
        |c| c.is_ascii_alphanumeric() || c == '_',
    )
}

/// Longest part of an untrusted id that logs and messages show.
const MAX_SHOWN: usize = 64;

/// An id that came from outside (a tenant id from a remote API), as logs and messages may
/// show it: control characters as `?` (no terminal escapes, no forged log lines) and at most
/// 64 characters.
pub fn shown(untrusted: &str) -> String {
    let mut out: String = untrusted
        .chars()
        .take(MAX_SHOWN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if untrusted.chars().nth(MAX_SHOWN).is_some() {
        out.push('…');
    }
    out
}

/// A character a tenant id may hold: `[A-Za-z0-9._-]`.
pub fn is_tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A character a tenant id may start with: any [`is_tenant_char`] but `.` (no hidden files,
/// no `..`).
pub fn is_tenant_first(c: char) -> bool {
    is_tenant_char(c) && c != '.'
}

/// Which token of a source: the only one ([`InstanceId::single`]), or one tenant's.
///
/// A tenant id comes from a remote API. It becomes an `InstanceId` only once
/// [`InstanceId::tenant`] has checked it, so a sink can put it into a file or object name as
/// it is: `[A-Za-z0-9._-]`, at most 128 characters, never starting with `.`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(Box<str>);

impl InstanceId {
    /// The instance of a source that holds a single token.
    pub fn single() -> Self {
        InstanceId::default()
    }

    /// A tenant id, if it can be used in a file name.
    pub fn tenant(id: &str) -> Result<Self, String> {
        let valid = fits(id, MAX_INSTANCE_ID, is_tenant_first, is_tenant_char);
        if valid {
            Ok(InstanceId(id.into()))
        } else {
            Err(format!("`{}` cannot be used in a file name", shown(id)))
        }
    }

    pub fn is_single(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for InstanceId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for InstanceId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// As its text (a tenant id in a request body).
impl serde::Serialize for InstanceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_safe_file_names() {
        for good in ["tenant-a", "T_1.x", "a"] {
            assert_eq!(InstanceId::tenant(good).unwrap().as_str(), good);
        }
        for bad in ["../x", "a/b", ".hidden", "", "a b"] {
            assert_eq!(
                InstanceId::tenant(bad).unwrap_err(),
                format!("`{bad}` cannot be used in a file name")
            );
        }
        assert!(InstanceId::tenant(&"x".repeat(129)).is_err());
        assert!(InstanceId::tenant(&"x".repeat(128)).is_ok());
        assert!(InstanceId::single().is_single());
        assert!(!InstanceId::tenant("a").unwrap().is_single());
    }

    #[test]
    fn a_hostile_tenant_id_is_shown_escaped_and_short() {
        let hostile = format!("\u{1b}[31mevil\n{}", "x".repeat(10_000));
        let message = InstanceId::tenant(&hostile).unwrap_err();
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(
            message.chars().count() < 120,
            "{} characters",
            message.len()
        );
        assert!(message.starts_with("`?[31mevil?xxx"), "{message}");
    }

    #[test]
    fn kubernetes_names() {
        assert!(is_dns_subdomain("orders-token.v1"));
        assert!(!is_dns_subdomain("Orders"));
        assert!(!is_dns_subdomain("-orders"));
        assert!(!is_dns_subdomain("orders-"));
        assert!(is_dns_label("team-a"));
        assert!(!is_dns_label("team.a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_config_key(".dockerconfigjson"));
        assert!(!is_config_key("a/b"));
    }

    #[test]
    fn env_and_source_names() {
        assert!(is_env_name("A_1"));
        assert!(is_env_name("_A"));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
        assert!(check_source_name("orders-api.v1").is_ok());
        assert!(check_source_name("-x").is_err());
        assert!(check_source_name(&"a".repeat(64)).is_err());
    }
}
