//! Compiled only for tests: `#[cfg(test)] mod tests;` in config/mod.rs.
//! The configuration error table: each case is a document, the field path, the line and
//! column, and a piece of the message a user must see.

use std::path::Path;

use super::*;
use crate::sink::file::FileMode;

const GOOD_SOURCE: &str = "  - name: a\n    kind: oauth2\n    token_url: https://idp.example.com/token\n    client_id: a\n    client_secret: { env: A_SECRET }\n    sinks:\n      - file: { path: a.token }\n";

fn errors(yaml: &str) -> Vec<ConfigError> {
    match Config::parse(yaml, Path::new("c.yaml")) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.0,
    }
}

#[test]
fn the_documented_example_parses_with_every_default() {
    let yaml = format!("sources:\n{GOOD_SOURCE}");
    let c = Config::parse(&yaml, Path::new("c.yaml")).unwrap();
    let s = &c.sources[0];
    assert!(s.required);
    let r = s.refresh.resolve(&c.defaults.refresh);
    assert_eq!((r.at.fraction(), r.jitter.fraction()), (0.8, 0.1));
    assert_eq!(
        (r.min_interval, r.max_interval),
        (Duration::from_secs(10), Duration::from_secs(86400))
    );
    let retry = s.retry.resolve(&c.defaults.retry);
    assert_eq!(
        (retry.initial, retry.max),
        (Duration::from_secs(1), Duration::from_secs(300))
    );
    assert_eq!(
        s.http.resolve(&c.defaults.http).timeout,
        Duration::from_secs(10)
    );
    assert_eq!(c.defaults.file.dir, PathBuf::from("/var/run/tokens"));
    assert_eq!(c.defaults.file.mode, FileMode(0o440));
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9090");
    assert_eq!(c.max_concurrent_fetches, 32);
}

#[test]
fn per_source_overrides_merge_field_by_field() {
    let yaml = format!(
        "defaults:\n  refresh: {{ at: 50%, min_interval: 1s }}\nsources:\n{}",
        GOOD_SOURCE.replace("    sinks:", "    refresh: { jitter: 5% }\n    sinks:")
    );
    let c = Config::parse(&yaml, Path::new("c.yaml")).unwrap();
    let r = c.sources[0].refresh.resolve(&c.defaults.refresh);
    assert_eq!(
        (r.at.fraction(), r.jitter.fraction(), r.min_interval),
        (0.5, 0.05, Duration::from_secs(1))
    );
}

#[test]
fn error_table() {
    let src = |extra: &str| format!("sources:\n{GOOD_SOURCE}{extra}");
    let with = |from: &str, to: &str| format!("sources:\n{}", GOOD_SOURCE.replace(from, to));
    let cases: Vec<(String, &str, (usize, usize), &str)> = vec![
        // Values refused inside a kind's own (flattened) fields name their field.
        (
            "sources:\n  - name: k\n    kind: kubernetes_token\n    service_account: x\n    expiration: 5 fortnights\n    sinks: [ { file: { path: k } } ]\n".into(),
            "sources[0].expiration",
            (5, 17),
            "found `5 fortnights`",
        ),
        (
            "sources:\n  - name: m\n    kind: mindsphere\n    client_id: { env: I }\n    client_secret: { env: S }\n    app_name: a\n    app_version: 1\n    host_tenant: h\n    user_tenant: u\n    sinks: [ { file: { path: m } } ]\n".into(),
            "sources[0].app_version",
            (7, 18),
            "invalid type: integer `1`, expected a string",
        ),
        (
            "sources:\n  - name: m\n    kind: mindsphere\n    client_id: { env: I }\n    client_secret: { env: S }\n    app_name: a\n    app_version: '1'\n    host_tenant: h\n    user_tenants: [a, b]\n    batch_size: lots\n    sinks: [ { file: { path: m } } ]\n".into(),
            "sources[0].batch_size",
            (10, 17),
            "invalid type: string \"lots\"",
        ),
        (
            src("    notify:\n      - signal: { name: HUP }\n"),
            "sources[0].notify[0].signal",
            (10, 9),
            "exactly one of `pid_file` or `process`",
        ),
        (
            src("    notify:\n      - signal: { name: KILL, pid_file: /p }\n"),
            "sources[0].notify[0].signal.name",
            (10, 25),
            "unknown variant `KILL`",
        ),
        (
            src("    notify:\n      - http: { url: 'http://app.example.com/hook' }\n"),
            "sources[0].notify[0].http.url",
            (10, 17),
            "clear text to another host",
        ),
        (
            src("    notify:\n      - exec: { command: [/bin/true], timeout: 0s, colour: x }\n"),
            "sources[0].notify[0].exec.colour",
            (10, 52),
            "unknown field `colour`",
        ),
        (
            src("    on_remove: later\n"),
            "sources[0].on_remove",
            (9, 16),
            "unknown variant `later`",
        ),
        (
            "sources: [\n".into(),
            "sources",
            (1, 10),
            "unclosed bracket",
        ),
        ("sources: []\n".into(), "sources", (1, 1), "no sources"),
        (
            "source: []\n".into(),
            "source",
            (1, 1),
            "unknown field `source`",
        ),
        (
            with("    client_id: a\n", "    client_id: a\n    scpoe: x\n"),
            "sources[0].scpoe",
            (6, 5),
            "unknown field `scpoe`",
        ),
        (
            with("kind: oauth2", "kind: oauth3"),
            "sources[0].kind",
            (3, 5),
            "unknown variant `oauth3`",
        ),
        (
            with(
                "      - file: { path: a.token }\n",
                "      - file: { path: a.token, formt: raw }\n",
            ),
            "sources[0].sinks[0].file.formt",
            (8, 32),
            "unknown field `formt`",
        ),
        (
            with(
                "      - file: { path: a.token }\n",
                "      - flie: { path: a.token }\n",
            ),
            "sources[0].sinks[0]",
            (8, 9),
            "unknown variant `flie`",
        ),
        (
            format!("defaults:\n  retry: {{ initial: 10 parsecs }}\n{}", src("")),
            "defaults.retry.initial",
            (2, 21),
            "expected a duration",
        ),
        (
            format!("defaults:\n  refresh: {{ at: 80 }}\n{}", src("")),
            "defaults.refresh.at",
            (2, 18),
            "write it as \"80%\"",
        ),
        (
            format!("defaults:\n  refresh: {{ at: 180% }}\n{}", src("")),
            "defaults.refresh.at",
            (2, 18),
            "between 0% and 100%",
        ),
        (
            format!("defaults:\n  refresh: {{ at: 100% }}\n{}", src("")),
            "defaults.refresh.at",
            (2, 14),
            "less than 100%",
        ),
        (
            format!("defaults:\n  refresh: {{ jitter: 90% }}\n{}", src("")),
            "defaults.refresh.jitter",
            (2, 14),
            "smaller than `at`",
        ),
        (
            format!(
                "defaults:\n  refresh: {{ min_interval: 2h, max_interval: 1h }}\n{}",
                src("")
            ),
            "defaults.refresh.min_interval",
            (2, 14),
            "larger than max_interval",
        ),
        (
            format!("defaults:\n  file: {{ mode: 440 }}\n{}", src("")),
            "defaults.file.mode",
            (2, 17),
            "quoted octal string, for example \"0440\"",
        ),
        (
            format!("defaults:\n  file: {{ mode: \"0200\" }}\n{}", src("")),
            "defaults.file.mode",
            (2, 17),
            "does not let the owner read",
        ),
        (
            format!("defaults:\n  http: {{ client_cert: /c.pem }}\n{}", src("")),
            "defaults.http.client_cert",
            (2, 11),
            "go together",
        ),
        (
            src(&GOOD_SOURCE.replace(
                "token_url: https://idp.example.com/token",
                "token_url: https://b",
            )),
            "sources[1].name",
            (9, 5),
            "duplicate source name `a`",
        ),
        (
            with("name: a", "name: Bad/Name"),
            "sources[0].name",
            (2, 5),
            "not a valid name",
        ),
        (
            with(
                "token_url: https://idp.example.com/token",
                "token_url: not a url",
            ),
            "sources[0].token_url",
            (4, 5),
            "not a URL",
        ),
        (
            with(
                "token_url: https://idp.example.com/token",
                "token_url: ftp://x/y",
            ),
            "sources[0].token_url",
            (4, 5),
            "scheme `ftp`",
        ),
        (
            with("    client_id: a\n", ""),
            "sources[0].client_id",
            (2, 5),
            "required with `auth: basic`",
        ),
        (
            with("{ env: A_SECRET }", "hunter2"),
            "sources[0].client_secret",
            (6, 5),
            "allow_inline_secrets",
        ),
        (
            with("{ env: A_SECRET }", "{ env: A, file: /x }"),
            "sources[0]",
            (2, 5),
            "exactly one of",
        ),
        (
            with(
                "    client_id: a\n",
                "    client_id: a\n    params: { scope: x }\n",
            ),
            "sources[0].params.scope",
            (6, 15),
            "set by the agent",
        ),
        (
            with(
                "    client_id: a\n",
                "    client_id: a\n    response: { token: access_token }\n",
            ),
            "sources[0].response.token",
            (6, 17),
            "not a JSON pointer",
        ),
        (
            with("    client_id: a\n", "    client_id: a\n    ttl: 0s\n"),
            "sources[0].ttl",
            (6, 5),
            "greater than zero",
        ),
        (
            // `now + ttl` would panic; the bound refuses it where it is written.
            with(
                "    client_id: a\n",
                "    client_id: a\n    ttl: 18446744073709551615s\n",
            ),
            "sources[0]",
            (2, 5),
            "`18446744073709551615s` is longer than the limit of one year",
        ),
        (
            format!(
                "defaults:\n  refresh: {{ max_interval: 500y }}\n{}",
                src("")
            ),
            "defaults.refresh.max_interval",
            (2, 28),
            "`500y` is longer than the limit of one year",
        ),
        (
            with(
                "      - file: { path: a.token }\n",
                "      - file: { path: ../a.token }\n",
            ),
            "sources[0].sinks[0].file.path",
            (8, 17),
            "could escape",
        ),
        (
            with(
                "      - file: { path: a.token }\n",
                "      - file: { path: /etc/a.token }\n",
            ),
            "sources[0].sinks[0].file.path",
            (8, 17),
            "is absolute",
        ),
        (
            with(
                "      - file: { path: a.token }\n",
                "      - file: { path: a.token, env_name: X }\n",
            ),
            "sources[0].sinks[0].file.env_name",
            (8, 32),
            "only applies to `format: env`",
        ),
        (
            with(
                "      - file: { path: a.token }\n",
                "      - file: { path: a.token }\n      - file: { path: ./a.token }\n",
            ),
            "sources[0].sinks[1].file.path",
            (9, 17),
            "also written by sources[0].sinks[0]",
        ),
        (
            with(
                "    sinks:\n      - file: { path: a.token }\n",
                "    sinks: []\n",
            ),
            "sources[0].sinks",
            (7, 5),
            "no sinks",
        ),
        (
            "sources:\n  - name: a\n    name: b\n".into(),
            "sources[0]",
            (3, 5),
            "duplicate mapping key: name",
        ),
    ];
    let mut mismatches = Vec::new();
    for (yaml, path, (line, column), message) in cases {
        let all = errors(&yaml);
        let want = format!("c.yaml:{line}:{column}: ");
        let found = all.iter().any(|e| {
            e.path == path && e.message.contains(message) && e.to_string().starts_with(&want)
        });
        if !found {
            let got: Vec<String> = all
                .iter()
                .map(|e| format!("{e} [path={}]", e.path))
                .collect();
            mismatches.push(format!("want {want}{path}: …{message}…\n  got {got:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_problem_in_defaults_is_reported_once_not_per_source() {
    let two = format!(
        "defaults:\n  refresh: {{ min_interval: 2h, max_interval: 1h }}\nsources:\n{GOOD_SOURCE}{}",
        GOOD_SOURCE
            .replace("name: a", "name: b")
            .replace("a.token", "b.token")
    );
    let all = errors(&two);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].path, "defaults.refresh.min_interval");
}

#[test]
fn yaml_1_2_scalars_stay_strings() {
    let yaml = format!(
        "defaults:\n  file: {{ mode: 0440 }}\nsources:\n{}",
        GOOD_SOURCE.replace(
            "    sinks:",
            "    headers: { X-On: yes, X-Off: no }\n    sinks:"
        )
    );
    let c = Config::parse(&yaml, Path::new("c.yaml")).unwrap();
    assert_eq!(
        c.defaults.file.mode,
        FileMode(0o440),
        "an unquoted 0440 is read as octal"
    );
    let crate::source::SourceSpec::OAuth2(o) = &c.sources[0].spec else {
        panic!("oauth2")
    };
    let inline = |v: &str| Some(crate::credential::CredentialRef::Inline(v.into()));
    assert_eq!(o.headers.get("X-On").cloned(), inline("yes"));
    assert_eq!(o.headers.get("X-Off").cloned(), inline("no"));
}

#[test]
fn inline_secrets_are_accepted_when_allowed_with_a_warning() {
    let yaml = format!(
        "allow_inline_secrets: true\nsources:\n{}",
        GOOD_SOURCE.replace("{ env: A_SECRET }", "hunter2")
    );
    let c = Config::parse(&yaml, Path::new("c.yaml")).unwrap();
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(!warnings[0].contains("hunter2"));
}

#[test]
fn every_example_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = Config::load(&path) {
                panic!("{e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 4, "examples/ has {seen} configs");
}

#[test]
fn huge_files_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, "#".repeat(33 * 1024 * 1024)).unwrap();
    let e = Config::load(&path).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

/// `count` oauth2 sources in flow style, about 14 YAML nodes each.
fn many_sources(count: usize) -> String {
    let mut text = String::from("sources:\n");
    for i in 0..count {
        text.push_str(&format!("  - {{ name: s{i}, kind: oauth2, token_url: 'http://127.0.0.1:1/t', auth: none, sinks: [ {{ file: {{ path: s{i}.token }} }} ] }}\n"));
    }
    text
}

#[test]
fn configs_beyond_the_default_yaml_budget_parse_and_fingerprint() {
    // 20 000 sources are ~280 000 nodes: past serde-saphyr's default 250 000.
    let text = many_sources(20_000);
    let config = Config::parse_live(&text, Path::new("c.yaml")).unwrap();
    assert_eq!(config.sources.len(), 20_000);
    // The reload fingerprint reads the same text with the same budget: every source has one.
    assert!(config.sources.iter().all(|s| s.print.whole.is_some()));
    assert_ne!(config.sources[0].print, config.sources[19_999].print);
}

#[test]
fn alias_expansion_is_still_bounded() {
    // Inside a source item serde buffers every value before typing it, so aliases there are
    // replayed in full. Each level repeats the one before ten times: 10^9 scalars from ~400
    // bytes, refused by the alias limits, which do not grow with the text.
    let mut text = String::from(
        "sources:\n  - name: a\n    kind: exec\n    command: [/bin/true]\n    l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for level in 1..9 {
        let prev = format!("*l{}", level - 1);
        text.push_str(&format!(
            "    l{level}: &l{level} [{}]\n",
            vec![prev; 10].join(", ")
        ));
    }
    let found = errors(&text);
    assert!(
        found.iter().any(|e| e.message.contains("budget")),
        "{found:?}"
    );
}

#[test]
fn a_tenant_pattern_that_can_produce_another_sinks_target_is_refused_with_both_places() {
    let tenants = "  - name: mdsp\n    kind: mindsphere\n    base_url: https://gateway.example.com\n    client_id: c\n    client_secret: { env: S }\n    app_name: app\n    app_version: 1.0.0\n    host_tenant: host\n    all_tenants: true\n    sinks:\n      - file: { path: '{tenant}.token' }\n";
    // The literal target first, then the pattern: reported at the pattern, naming the place.
    let all = errors(&format!(
        "sources:\n{}{tenants}",
        GOOD_SOURCE.replace("a.token", "orders.token")
    ));
    let found = all
        .iter()
        .find(|e| e.path == "sources[1].sinks[0].file.path");
    let e = found.unwrap_or_else(|| panic!("{all:#?}"));
    assert!(e.to_string().starts_with("c.yaml:19:17: "), "{e}");
    assert!(
        e.message
            .contains("/var/run/tokens/orders.token, which sources[0].sinks[0] also writes"),
        "{e}"
    );
    // The other order, and two per-tenant sinks that overlap.
    let all = errors(&format!(
        "sources:\n{tenants}{}",
        GOOD_SOURCE.replace("a.token", "orders.token")
    ));
    assert!(
        all.iter().any(|e| e.path == "sources[1].sinks[0].file.path"
            && e.message
                .contains("can also be written by sources[0].sinks[0]")),
        "{all:#?}"
    );
    let all = errors(&format!(
        "sources:\n{tenants}{}",
        tenants.replace("name: mdsp", "name: other")
    ));
    assert!(
        all.iter()
            .any(|e| e.path == "sources[1].sinks[0].file.path"),
        "{all:#?}"
    );
    // Distinct places pass: a sub-directory a tenant id cannot reach.
    let ok = format!(
        "sources:\n{}{}",
        GOOD_SOURCE.replace("a.token", "orders.token"),
        tenants.replace("'{tenant}.token'", "'mdsp/{tenant}.token'")
    );
    assert!(Config::parse(&ok, Path::new("c.yaml")).is_ok());
}

#[test]
fn state_lives_outside_the_token_directory_unless_told_and_then_a_warning_says_so() {
    let c = Config::parse(&format!("sources:\n{GOOD_SOURCE}"), Path::new("c.yaml")).unwrap();
    assert_eq!(c.state_dir(), Path::new(super::DEFAULT_STATE_DIR));
    assert!(!c.state_dir().starts_with(&c.defaults.file.dir));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let inside = format!("state_dir: /var/run/tokens/.state\nsources:\n{GOOD_SOURCE}");
    let c = Config::parse(&inside, Path::new("c.yaml")).unwrap();
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("lies inside the token directory /var/run/tokens")),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn plain_http_to_another_host_is_refused_unless_allowed_and_then_warned_about() {
    let with_url = |url: &str, extra: &str| {
        format!(
            "{extra}sources:\n{}",
            GOOD_SOURCE.replace("https://idp.example.com/token", url)
        )
    };
    let all = errors(&with_url("http://idp.example.com/token?key=SENTINEL", ""));
    let e = all
        .iter()
        .find(|e| e.path == "sources[0].token_url")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert!(
        e.message
            .contains("`http://idp.example.com/token` sends tokens and credentials in clear text"),
        "{e}"
    );
    assert!(
        !e.message.contains("SENTINEL"),
        "no query string in messages: {e}"
    );
    // Loopback is this machine: allowed.
    for url in [
        "http://127.0.0.1:8080/t",
        "http://localhost/t",
        "http://[::1]/t",
    ] {
        let c = Config::parse(&with_url(url, ""), Path::new("c.yaml")).unwrap();
        assert!(c.warnings().is_empty(), "{url}: {:?}", c.warnings());
    }
    // Allowed on purpose: a warning instead, at `validate` and at start.
    let allowed = with_url(
        "http://idp.example.com/token",
        "defaults:\n  http: { require_https: false }\n",
    );
    let c = Config::parse(&allowed, Path::new("c.yaml")).unwrap();
    assert_eq!(
        c.warnings(),
        [
            "source `a`: token_url `http://idp.example.com/token` sends tokens and credentials in clear text (require_https: false)"
        ]
    );
}

#[test]
fn a_leader_only_source_with_file_sinks_is_warned_about_under_election() {
    let source = GOOD_SOURCE.replace(
        "      - file: { path: a.token }\n",
        "      - file: { path: a.token }\n      - secret: { name: a-token }\n",
    );
    let c = Config::parse(&format!("sources:\n{source}"), Path::new("c.yaml")).unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let elected = format!("leader_election: {{ enabled: true }}\nsources:\n{source}");
    let c = Config::parse(&elected, Path::new("c.yaml")).unwrap();
    assert!(
        c.warnings()[0].starts_with("source `a`: with leader election it runs on the leader only"),
        "{:?}",
        c.warnings()
    );
}
