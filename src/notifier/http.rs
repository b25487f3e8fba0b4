//! `http: { url, method: POST, headers, timeout }`: a webhook called after each change. The
//! JSON body names the source, the expiry and the file; never the token. Header values may be
//! credential references (`{ file: PATH }`), read at each call.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{Change, NotifyError, check_timeout};
use crate::credential::{CredentialRef, names_a_secret};
use crate::http::{self, http_url};
use crate::kind::Problems;
use crate::redact::url_for_display;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAction {
    pub url: String,
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub headers: BTreeMap<String, CredentialRef>,
    /// Longest the call may take (default 5s).
    #[serde(default, with = "crate::de::duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub on_start: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
    Get,
}

impl HttpAction {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    pub fn check(&self) -> Problems {
        let mut problems = Vec::new();
        if let Err(e) = http_url(&self.url) {
            problems.push(("http.url".into(), e.to_string()));
        }
        check_timeout(self.timeout, &mut problems, "http");
        problems
    }

    pub fn inline_secrets(&self) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(name, value)| value.is_inline() && names_a_secret(name))
            .map(|(name, _)| format!("http.headers.{name}"))
            .collect()
    }

    pub async fn run(
        &self,
        client: &http::Client,
        source: &str,
        change: &Change,
    ) -> Result<(), NotifyError> {
        let shown = http_url(&self.url)
            .map(|u| url_for_display(&u))
            .unwrap_or_default();
        let failed = |why: String| NotifyError(format!("{shown}: {why}"));
        let method = match self.method {
            Method::Post => ::http::Method::POST,
            Method::Put => ::http::Method::PUT,
            Method::Get => ::http::Method::GET,
        };
        let mut request = client.request(method, &self.url);
        for (name, value) in &self.headers {
            let value = value.load().map_err(|e| failed(e.to_string()))?;
            request = request.header(name, value.expose_secret());
        }
        if self.method != Method::Get {
            request = request.json(&serde_json::json!({
                "source": source,
                "expires_at": humantime::format_rfc3339_seconds(change.expires_at).to_string(),
                "file": change.file,
            }));
        }
        // Bounded by the runner's timeout, which counts it as a timeout (not a failure).
        let reply = http::send(request, &shown, Duration::MAX)
            .await
            .map_err(|e| NotifyError(e.to_string()))?;
        if (200..300).contains(&reply.status) {
            Ok(())
        } else {
            Err(failed(format!("answered HTTP {}", reply.status)))
        }
    }
}
