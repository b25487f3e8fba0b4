//! What a reload compares: the effective settings of each source (its own fields, the defaults
//! it inherits, its sinks) as digests, so that a source whose settings did not change keeps its
//! token, schedule and series, and one that did starts over.
//!
//! The digests are taken from the YAML document itself (as a JSON value, keys sorted), not from
//! the typed model, whose `Debug` hides inline credentials: a rotated inline secret must count
//! as a change. The inherited defaults are added in their resolved form, so a change to a
//! default that a source overrides does not touch it. Settings that only apply at the next
//! restart (`server`, `leader_election`, `state_dir`, `max_concurrent_fetches`) are left out.

use std::path::PathBuf;

use ring::digest::{Context, SHA256};
use serde_json::Value;

use super::Config;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// One source's settings, as a reload compares them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePrint {
    /// Everything that decides how the source fetches and where it delivers; `None` when not
    /// computed (a configuration from [`Config::parse`]), which never counts as the same.
    pub whole: Option<Digest>,
    /// Each sink, in order, with what it inherits: the sinks of a changed source that are not
    /// among its new ones are retired (their outputs removed).
    pub sinks: Vec<Digest>,
    /// Files the source reads at each fetch (credentials, CA bundle, client certificate): a
    /// change to one cuts a failure backoff short.
    pub files: Vec<PathBuf>,
}

impl SourcePrint {
    /// Whether two versions of a source have the same effective settings (never when either
    /// was not computed).
    pub fn same_settings(&self, other: &SourcePrint) -> bool {
        self.whole.is_some() && self.whole == other.whole
    }

    /// Whether sink `index` of this version is also a sink of `other` (never when unknown).
    pub fn sink_kept_in(&self, index: usize, other: &SourcePrint) -> bool {
        self.sinks
            .get(index)
            .is_some_and(|d| other.sinks.contains(d))
    }
}

/// The keys whose string value names a file the HTTP client reads.
const FILE_SETTINGS: [&str; 3] = ["ca_file", "client_cert", "client_key"];

/// Every source's print, in `config.sources` order. A document that cannot be read as a value
/// (it always can, once it parsed as a configuration) gives empty digests: every source then
/// counts as changed, the safe side.
pub(super) fn prints(text: &str, config: &Config) -> Vec<SourcePrint> {
    let document: Value =
        serde_saphyr::from_str_with_options(text, super::parse::yaml_options(text))
            .unwrap_or_default();
    let written = document.get("sources").and_then(Value::as_array);
    let defaults = &config.defaults;
    let file_defaults = format!("{:?}", defaults.file);
    config
        .sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let Some(value) = written.and_then(|all| all.get(i)) else {
                return SourcePrint::default();
            };
            let http = source.http.resolve(&defaults.http);
            let inherited = format!(
                "{:?}{:?}{:?}{}{file_defaults}",
                source.refresh.resolve(&defaults.refresh),
                source.retry.resolve(&defaults.retry),
                http,
                source.http.requires_https(&defaults.http),
            );
            let sink_inherited = format!("{http:?}{file_defaults}");
            let sinks = value
                .get("sinks")
                .and_then(Value::as_array)
                .map(|sinks| {
                    sinks
                        .iter()
                        .map(|s| digest_of(&[&s.to_string(), &sink_inherited]))
                        .collect()
                })
                .unwrap_or_default();
            let mut files = Vec::new();
            credential_files(value, &mut files);
            let http_files = [&http.ca_file, &http.client_cert, &http.client_key];
            files.extend(http_files.into_iter().flatten().cloned());
            files.sort();
            files.dedup();
            SourcePrint {
                whole: Some(digest_of(&[&value.to_string(), &inherited])),
                sinks,
                files,
            }
        })
        .collect()
}

/// SHA-256 of `parts`, each length-prefixed so that no two splits of the same bytes collide.
pub fn digest_of(parts: &[&str]) -> Digest {
    let mut context = Context::new(&SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part.as_bytes());
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The files named by credential references (`{ file: PATH }`) and HTTP file settings anywhere
/// in a source. Found in the document rather than asked of each kind, so a new kind that uses
/// [`crate::credential::CredentialRef`] is covered without code of its own; a path that is not
/// a credential costs at most an early retry.
fn credential_files(value: &Value, out: &mut Vec<PathBuf>) {
    match value {
        Value::Object(map) => {
            if let (1, Some(Value::String(path))) = (map.len(), map.get("file")) {
                out.push(PathBuf::from(path));
            }
            for (key, v) in map {
                match v {
                    Value::String(path) if FILE_SETTINGS.contains(&key.as_str()) => {
                        out.push(PathBuf::from(path))
                    }
                    _ => credential_files(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| credential_files(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn prints_of(text: &str) -> Vec<SourcePrint> {
        let config = Config::parse_live(text, Path::new("t.yaml")).unwrap();
        config.sources.into_iter().map(|s| s.print).collect()
    }

    const BASE: &str = "
defaults: { refresh: { at: 80% } }
sources:
  - name: a
    kind: exec
    command: [/bin/true]
    secret_env: { PW: { file: /run/secrets/a/pw } }
    sinks: [ { file: { path: a } } ]
  - name: b
    kind: exec
    command: [/bin/true]
    refresh: { at: 50% }
    sinks: [ { file: { path: b } }, { file: { path: b2 } } ]
";

    #[test]
    fn order_and_layout_do_not_matter_but_settings_and_inherited_defaults_do() {
        let base = prints_of(BASE);
        // Reordered sources and keys, flow style: the same settings.
        let same = prints_of(
            "sources:
  - { name: b, refresh: { at: 50% }, kind: exec, command: [/bin/true], sinks: [ { file: { path: b } }, { file: { path: b2 } } ] }
  - name: a
    sinks: [ { file: { path: a } } ]
    kind: exec
    secret_env: { PW: { file: /run/secrets/a/pw } }
    command: [/bin/true]
defaults: { refresh: { at: 80% } }
",
        );
        assert_eq!(base[0], same[1]);
        assert_eq!(base[1], same[0]);
        // A default that `b` overrides changes `a` only.
        let changed = prints_of(&BASE.replace("at: 80%", "at: 70%"));
        assert_ne!(base[0].whole, changed[0].whole);
        assert_eq!(base[1].whole, changed[1].whole);
        // One sink of `b` changed: the other keeps its digest.
        let sink = prints_of(&BASE.replace("path: b2", "path: b3"));
        assert_ne!(base[1].whole, sink[1].whole);
        assert_eq!(base[1].sinks[0], sink[1].sinks[0]);
        assert_ne!(base[1].sinks[1], sink[1].sinks[1]);
    }

    #[test]
    fn a_changed_inline_secret_is_a_change() {
        let text = |pw: &str| {
            format!(
                "allow_inline_secrets: true\nsources:\n  - name: a\n    kind: exec\n    command: [/bin/true]\n    secret_env: {{ PW: {pw} }}\n    sinks: [ {{ file: {{ path: a }} }} ]\n"
            )
        };
        assert_ne!(
            prints_of(&text("one"))[0].whole,
            prints_of(&text("two"))[0].whole
        );
    }

    #[test]
    fn finds_credential_and_tls_files() {
        let text = "defaults: { http: { ca_file: /etc/ca.pem } }
sources:
  - name: a
    kind: oauth2
    token_url: https://issuer.example/token
    client_id: app
    client_secret: { file: /run/secrets/a/secret }
    sinks: [ { file: { path: a } } ]
";
        let print = &prints_of(text)[0];
        assert_eq!(
            print.files,
            [
                PathBuf::from("/etc/ca.pem"),
                PathBuf::from("/run/secrets/a/secret")
            ]
        );
    }
}
