//! Checks that need more than one field: each returns `(field path, message)`.

use std::collections::{BTreeMap, HashMap};

use super::overlap::common_place;
use super::{Config, HttpConfig, RefreshConfig, RetryConfig};
use crate::http::is_cleartext_remote;
use crate::names::check_source_name;
use crate::redact::url_for_display;
use crate::sink::{TENANT, place};

/// What `validate` says of a credential written in the YAML.
const INLINE_SECRET: &str = "credential written in the config: use { file: PATH } or { env: NAME }, or set `allow_inline_secrets: true`";

pub(super) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut push = |path: String, message: String| problems.push((path, message));

    if config.sources.is_empty() {
        push("sources".into(), "no sources: add at least one".into());
    }
    if config.max_concurrent_fetches == 0 {
        push("max_concurrent_fetches".into(), "must be at least 1".into());
    }
    for (field, message) in config.leader_election.check() {
        push(format!("leader_election.{field}"), message);
    }
    check_refresh(&config.defaults.refresh, "defaults.refresh", &mut push);
    check_retry(&config.defaults.retry, "defaults.retry", &mut push);
    check_http(&config.defaults.http, "defaults.http", &mut push);

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut targets = Targets::default();
    for (i, source) in config.sources.iter().enumerate() {
        let at = format!("sources[{i}]");
        if let Err(message) = check_source_name(&source.name) {
            push(format!("{at}.name"), message);
        }
        if let Some(first) = names.insert(&source.name, i) {
            push(
                format!("{at}.name"),
                format!(
                    "duplicate source name `{}` (also sources[{first}])",
                    source.name
                ),
            );
        }
        check_refresh(&source.refresh, &format!("{at}.refresh"), &mut push);
        check_retry(&source.retry, &format!("{at}.retry"), &mut push);
        check_http(&source.http, &format!("{at}.http"), &mut push);
        // Order across the merged policy, reported where the values were written (the
        // source, or `defaults` for every source that inherits them: deduplicated below).
        let refresh = source.refresh.resolve(&config.defaults.refresh);
        if refresh.min_interval > refresh.max_interval {
            let overridden =
                source.refresh.min_interval.is_some() || source.refresh.max_interval.is_some();
            let path = if overridden {
                format!("{at}.refresh.min_interval")
            } else {
                "defaults.refresh.min_interval".into()
            };
            push(
                path,
                format!(
                    "{:?} is larger than max_interval ({:?})",
                    refresh.min_interval, refresh.max_interval
                ),
            );
        }
        let retry = source.retry.resolve(&config.defaults.retry);
        if retry.initial > retry.max {
            let overridden = source.retry.initial.is_some() || source.retry.max.is_some();
            let path = if overridden {
                format!("{at}.retry.initial")
            } else {
                "defaults.retry.initial".into()
            };
            push(
                path,
                format!("{:?} is larger than max ({:?})", retry.initial, retry.max),
            );
        }
        let kind = source.spec.kind();
        for (field, message) in kind.check() {
            push(format!("{at}.{field}"), message);
        }
        if source.http.requires_https(&config.defaults.http) {
            for (field, url) in cleartext_endpoints(source) {
                push(
                    format!("{at}.{field}"),
                    format!(
                        "`{}` sends tokens and credentials in clear text to another host: use https, or set `http.require_https: false` (a warning then)",
                        display(url)
                    ),
                );
            }
        }
        if !config.allow_inline_secrets {
            for field in kind.inline_secrets() {
                push(format!("{at}.{field}"), INLINE_SECRET.into());
            }
        }
        let requires_https = source.http.requires_https(&config.defaults.http);
        for (k, action) in source.notify.iter().enumerate() {
            let action_at = format!("{at}.notify[{k}]");
            for (field, message) in action.check() {
                push(format!("{action_at}.{field}"), message);
            }
            if !config.allow_inline_secrets {
                for field in action.inline_secrets() {
                    push(format!("{action_at}.{field}"), INLINE_SECRET.into());
                }
            }
            if let Some((field, url)) = action.remote_endpoint()
                && requires_https
                && is_cleartext_remote(url)
            {
                push(
                    format!("{action_at}.{}.{field}", action.name()),
                    format!(
                        "`{}` goes in clear text to another host: use https, or set `http.require_https: false`",
                        display(url)
                    ),
                );
            }
        }
        if source.sinks.is_empty() {
            push(
                format!("{at}.sinks"),
                "no sinks: add at least one, e.g. `- file: { path: NAME.token }`".into(),
            );
        }
        for (j, entry) in source.sinks.iter().enumerate() {
            let sink_at = format!("{at}.sinks[{j}]");
            // Fields of a sink entry sit under its kind's key (`file.path`).
            let field_at = format!("{sink_at}.{}", entry.name());
            let sink = entry.kind();
            for (field, message) in sink.check() {
                push(format!("{field_at}.{field}"), message);
            }
            if !config.allow_inline_secrets {
                for field in sink.inline_secrets() {
                    push(format!("{field_at}.{field}"), INLINE_SECRET.into());
                }
            }
            match (kind.is_multi_instance(), sink.is_per_instance()) {
                (true, false) if sink.names_one_place() => push(
                    sink_at.clone(),
                    "this source yields one token per tenant: put `{tenant}` in the path, e.g. `path: \"tokens/{tenant}.token\"`".into(),
                ),
                (false, true) => push(sink_at.clone(), "`{tenant}` only applies to per-tenant sources".into()),
                _ => {}
            }
            if let Some((field, target)) = sink.target(&config.defaults.file.dir) {
                let field = format!("{field_at}.{field}");
                if let Some(message) = targets.add(place(&target), sink_at.clone()) {
                    push(field, message);
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    problems
}

pub(super) fn warnings(config: &Config) -> Vec<String> {
    let mut warnings: Vec<String> =
        config
            .sources
            .iter()
            .flat_map(|s| {
                s.spec.kind().inline_secrets().into_iter().map(move |f| {
                    format!("source `{}`: {f} is written inline in the config", s.name)
                })
            })
            .collect();
    for source in &config.sources {
        if !source.http.requires_https(&config.defaults.http) {
            for (field, url) in cleartext_endpoints(source) {
                warnings.push(format!(
                    "source `{}`: {field} `{}` sends tokens and credentials in clear text (require_https: false)",
                    source.name,
                    display(url)
                ));
            }
        }
    }
    if config.leader_election.enabled {
        for source in &config.sources {
            let kinds = || source.sinks.iter().map(|s| s.kind());
            if kinds().any(|k| k.needs_leader()) && kinds().any(|k| !k.needs_leader()) {
                warnings.push(format!(
                    "source `{}`: with leader election it runs on the leader only (it has a Secret or API-Portal sink), so its other sinks are written there only; give sinks every replica needs their own source",
                    source.name
                ));
            }
        }
    }
    let (state, tokens) = (config.state_dir(), &config.defaults.file.dir);
    if state.starts_with(tokens) {
        warnings.push(format!(
            "state_dir {} lies inside the token directory {}, which apps mount and may be able to write: keep it on its own volume",
            state.display(),
            tokens.display()
        ));
    }
    warnings
}

fn check_refresh(r: &RefreshConfig, at: &str, push: &mut impl FnMut(String, String)) {
    if let Some(p) = r.at
        && (p.fraction() <= 0.0 || p.fraction() >= 1.0)
    {
        push(
            format!("{at}.at"),
            format!("{p} must be more than 0% and less than 100%"),
        );
    }
    if let Some(j) = r.jitter
        && j.fraction() >= r.at.map_or(0.8, |a| a.fraction())
    {
        push(
            format!("{at}.jitter"),
            format!("{j} must be smaller than `at`"),
        );
    }
    if r.min_interval.is_some_and(|d| d.is_zero()) {
        push(
            format!("{at}.min_interval"),
            "must be greater than zero".into(),
        );
    }
}

fn check_retry(r: &RetryConfig, at: &str, push: &mut impl FnMut(String, String)) {
    if r.initial.is_some_and(|d| d.is_zero()) {
        push(format!("{at}.initial"), "must be greater than zero".into());
    }
}

fn check_http(h: &HttpConfig, at: &str, push: &mut impl FnMut(String, String)) {
    if h.timeout.is_some_and(|d| d.is_zero()) {
        push(format!("{at}.timeout"), "must be greater than zero".into());
    }
    if h.client_cert.is_some() != h.client_key.is_some() {
        push(
            format!("{at}.client_cert"),
            "client_cert and client_key go together".into(),
        );
    }
}

/// The places sinks write, to refuse a second sink that can write one of them: the same
/// literal target, or a `{tenant}` pattern that a remote tenant id could turn into another
/// sink's target.
#[derive(Default)]
struct Targets {
    /// Targets without `{tenant}`, with where they were written.
    literal: BTreeMap<String, String>,
    /// Targets with `{tenant}` (few: one per per-tenant sink), with where.
    patterns: Vec<(String, String)>,
}

impl Targets {
    /// Records `target` written at `at`; says which earlier sink it can collide with.
    fn add(&mut self, target: String, at: String) -> Option<String> {
        if !target.contains(TENANT) {
            let clash = self
                .patterns
                .iter()
                .find_map(|(pattern, other)| Some((common_place(pattern, &target)?, other)))
                .map(|(_, other)| {
                    format!("{target} can also be written by {other}, for a tenant id chosen by the remote API: give the per-tenant sink its own directory or prefix")
                });
            if let Some(other) = self.literal.insert(target.clone(), at) {
                return Some(format!("{target} is also written by {other}"));
            }
            return clash;
        }
        let clash = self
            .patterns
            .iter()
            .map(|(t, at)| (t, at))
            .chain(&self.literal)
            .find_map(|(other_target, other)| Some((common_place(&target, other_target)?, other)))
            .map(|(place, other)| {
                format!("a tenant id chosen by the remote API can make this sink write {place}, which {other} also writes: give each sink its own directory or prefix")
            });
        self.patterns.push((target, at));
        clash
    }
}

/// The endpoints of a source and its sinks that are plain `http://` to another host, with the
/// field (relative to the source) that names each.
fn cleartext_endpoints(source: &super::SourceConfig) -> Vec<(String, &str)> {
    let own = source
        .spec
        .kind()
        .remote_endpoint()
        .map(|(f, u)| (f.to_owned(), u));
    let sinks = source.sinks.iter().enumerate().filter_map(|(j, entry)| {
        let (field, url) = entry.kind().remote_endpoint()?;
        Some((format!("sinks[{j}].{}.{field}", entry.name()), url))
    });
    own.into_iter()
        .chain(sinks)
        .filter(|(_, url)| is_cleartext_remote(url))
        .collect()
}

/// A URL as messages show it: without user info or query (either may hold a credential).
fn display(url: &str) -> String {
    url::Url::parse(url).map_or_else(|_| url.to_owned(), |u| url_for_display(&u))
}
