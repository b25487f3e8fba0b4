//! `token-agent dev`: the first thing a newcomer runs. An embedded issuer on loopback, a
//! built-in configuration parsed by the real parser, tokens rotating in `./tokens`.

pub mod issuer;

use std::path::Path;

use crate::config::{Config, ConfigErrors};

/// The built-in configuration, filled in with the issuer's URL and its client secret.
pub fn config(
    token_url: &str,
    client_secret: &str,
    dir: &Path,
    listen: &str,
) -> Result<Config, ConfigErrors> {
    let yaml = format!(
        r#"# Built-in configuration of `token-agent dev`.
# The demo issuer's random secret lives only in this process: no file to write, so the demo
# runs on a read-only root filesystem with nothing writable but the tokens directory.
allow_inline_secrets: true
defaults:
  refresh: {{ at: 80%, jitter: 10%, min_interval: 5s }}
  retry: {{ initial: 1s, max: 10s }}
  file: {{ dir: "{dir}", mode: "0640" }}
server: {{ listen: "{listen}" }}
sources:
  - name: demo-api
    kind: oauth2
    token_url: "{token_url}"
    client_id: dev-client
    client_secret: {{ value: "{client_secret}" }}
    auth: basic
    scope: demo.read
    audience: https://demo-api.local
    sinks:
      - file: {{ path: demo-api.token, format: raw }}
      - file: {{ path: demo-api.json, format: json }}
  - name: demo-env
    kind: oauth2
    token_url: "{token_url}"
    client_id: dev-client
    client_secret: {{ value: "{client_secret}" }}
    auth: post
    scope: demo.write
    sinks:
      - file: {{ path: demo.env, format: env }}
"#,
        dir = dir.display(),
    );
    Config::parse(&yaml, Path::new("<built-in dev config>"))
}
