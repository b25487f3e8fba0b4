//! `token-agent dev`: the first thing a newcomer runs. An embedded issuer on loopback, a
//! built-in configuration parsed by the real parser, tokens rotating in `./tokens`.

pub mod issuer;

use std::path::Path;

use crate::config::{Config, ConfigErrors};

/// The built-in configuration, filled in with the issuer's URL and the secret file.
pub fn config(
    token_url: &str,
    secret_file: &Path,
    dir: &Path,
    listen: &str,
) -> Result<Config, ConfigErrors> {
    let yaml = format!(
        r#"# Built-in configuration of `token-agent dev`.
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
    client_secret: {{ file: "{secret}" }}
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
    client_secret: {{ file: "{secret}" }}
    auth: post
    scope: demo.write
    sinks:
      - file: {{ path: demo.env, format: env }}
"#,
        dir = dir.display(),
        secret = secret_file.display(),
    );
    Config::parse(&yaml, Path::new("<built-in dev config>"))
}
