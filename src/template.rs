//! Small Jinja templates (minijinja) for request parts built from credentials, e.g.
//! `Basic {{ basic("client_id", "client_secret") }}` or `{{ secret("password") | urlencode }}`.
//!
//! Strict: an unknown variable or secret is an error, not an empty string. Bounded: templates
//! run on a fuel budget. Quiet: errors name the template and the problem, never a value.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::http::basic_credentials;

/// Hidden context key holding the secrets of one rendering.
const SECRETS: &str = "__secrets";

/// Why a template did not render.
#[derive(Debug, thiserror::Error)]
#[error("template `{name}`: {message}")]
pub struct TemplateError {
    pub name: String,
    pub message: String,
}

/// The configured environment: functions `secret(name)`, `basic(id, secret)`; filters
/// `b64encode`, `date(strftime)` (UTC) plus minijinja's builtins (`urlencode`, `tojson`, …).
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

fn secret_value(state: &State, name: &str) -> Result<String, Error> {
    state
        .lookup(SECRETS)
        .and_then(|s| s.get_attr(name).ok())
        .filter(|v| !v.is_undefined())
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::UndefinedError,
                format!("no secret named `{name}` under `secrets:`"),
            )
        })
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(20_000));
        env.add_function("secret", |state: &State, name: String| {
            secret_value(state, &name)
        });
        env.add_function("basic", |state: &State, id: String, secret: String| {
            Ok::<_, Error>(basic_credentials(
                &secret_value(state, &id)?,
                &secret_value(state, &secret)?,
            ))
        });
        env.add_filter("b64encode", |value: String| STANDARD.encode(value));
        env.add_filter("date", |value: String, format: String| {
            let ts: jiff::Timestamp = value.parse().map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "`date` needs an RFC 3339 time such as expires_at",
                )
            })?;
            jiff::fmt::strtime::format(&format, ts).map_err(|e| {
                Error::new(ErrorKind::InvalidOperation, format!("bad date format: {e}"))
            })
        });
        Templates { env }
    }

    /// Renders `source` (called `name` in errors) with `secrets` and plain `values`.
    pub fn render(
        &self,
        name: &str,
        source: &str,
        secrets: &BTreeMap<String, String>,
        values: &BTreeMap<String, String>,
    ) -> Result<String, TemplateError> {
        let secrets = Value::from_pairs(
            secrets
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone()))),
        );
        let mut context: Vec<(String, Value)> = values
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        context.push((SECRETS.to_owned(), secrets));
        self.env
            .render_str(source, Value::from_pairs(context))
            .map_err(|e| TemplateError {
                name: name.to_owned(),
                message: describe(&e),
            })
    }

    /// Checks `source` against the secret names and values that will exist, with placeholder
    /// content, so `validate` catches syntax errors and unknown names without reading secrets.
    pub fn check(
        &self,
        name: &str,
        source: &str,
        secret_names: &[&str],
        value_names: &[&str],
    ) -> Result<(), TemplateError> {
        let placeholder = |names: &[&str]| {
            names
                .iter()
                .map(|n| (n.to_string(), "2000-01-01T00:00:00Z".to_owned())) // time-shaped, so `date` accepts it
                .collect::<BTreeMap<_, _>>()
        };
        self.render(
            name,
            source,
            &placeholder(secret_names),
            &placeholder(value_names),
        )
        .map(|_| ())
    }
}

/// minijinja's message with its location, without any debug dump of the context.
fn describe(e: &Error) -> String {
    let mut text = e
        .detail()
        .map(str::to_owned)
        .unwrap_or_else(|| e.kind().to_string());
    if let Some(line) = e.line() {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_secrets_helpers_and_filters() {
        let t = Templates::new();
        let secrets = map(&[("id", "my client"), ("pw", "p@ss:w&rd")]);
        let values = map(&[("token", "tok")]);
        let r = |src: &str| t.render("t", src, &secrets, &values).unwrap();
        assert_eq!(
            r("Basic {{ basic('id', 'pw') }}"),
            format!("Basic {}", STANDARD.encode("my client:p@ss:w&rd"))
        );
        assert_eq!(
            r("client_id={{ secret('id') | urlencode }}&x=1"),
            "client_id=my%20client&x=1"
        );
        let json: String = serde_json::from_str(&r("{{ secret('pw') | tojson }}")).unwrap();
        assert_eq!(
            json, "p@ss:w&rd",
            "tojson yields a JSON string of the exact value"
        );
        assert_eq!(
            r("{{ secret('pw') | b64encode }}"),
            STANDARD.encode("p@ss:w&rd")
        );
        assert_eq!(r("{{ token }}"), "tok");
        assert_eq!(
            r("{{ '2016-10-22T08:00:00Z' | date('%d-%m-%Y') }}"),
            "22-10-2016"
        );
        assert!(
            t.render("d", "{{ 'soon' | date('%Y') }}", &secrets, &values)
                .is_err()
        );
        assert_eq!(
            r("<{{ secret('pw') }}>"),
            "<p@ss:w&rd>",
            "no HTML auto-escaping"
        );
    }

    #[test]
    fn errors_name_the_template_never_the_value() {
        let t = Templates::new();
        let secrets = map(&[("pw", "hunter22")]);
        let e = t
            .render(
                "headers.Authorization",
                "{{ secret('nope') }}",
                &secrets,
                &BTreeMap::new(),
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("template `headers.Authorization`: no secret named `nope`"),
            "{e}"
        );
        let e = t
            .render("body", "{{ tokn }}", &secrets, &BTreeMap::new())
            .unwrap_err();
        assert!(e.to_string().contains("undefined"), "{e}");
        let e = t
            .render("body", "{{ secret('pw') + 1 }}", &secrets, &BTreeMap::new())
            .unwrap_err();
        assert!(!e.to_string().contains("hunter22"), "{e}");
        let e = t
            .render(
                "url",
                "{% for x in range(100000) %}{% endfor %}",
                &secrets,
                &BTreeMap::new(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
        assert!(
            t.check("body", "{{ secret('a') }} {{ token }}", &["a"], &["token"])
                .is_ok()
        );
        assert!(t.check("body", "{{ secret('b') }}", &["a"], &[]).is_err());
        assert!(t.check("body", "{{ unclosed", &[], &[]).is_err());
    }
}
