//! `kind: mindsphere` — Siemens Insights Hub (MindSphere) Token Management Service v3.
//!
//! Three modes: one user tenant (`POST /oauth/token`); a list of user tenants
//! (`POST /oauthTokens`, at most `batch_size` per call); or every tenant that authorized the
//! app (`all_tenants`: an operator token, `GET /userTenants` page by page, then batches).
//! Per-tenant modes yield one token per tenant; the agent keeps each tenant's token apart and
//! skips tenants whose token is not due (the service's "cache tokens" advice).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{self, HttpClients};
use super::error::FetchError;
use super::response::{self, check_token_text};
use super::{BuildError, Fetch, FetchContext, InstanceOutcome, jwt};
use crate::config::HttpSettings;
use crate::redact::url_for_display;
use crate::secret::SecretRef;
use crate::sink::file::check_instance_name;
use crate::token::Token;

/// The documented limit of `/oauthTokens`.
const MAX_BATCH: usize = 5;
/// The documented limit of `/userTenants`.
const MAX_PAGE: usize = 100;
/// A safety stop for a paging loop that never ends.
const MAX_PAGES: usize = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MindSphereConfig {
    /// Token Management Service base URL.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub client_id: SecretRef,
    pub client_secret: SecretRef,
    pub app_name: String,
    pub app_version: String,
    pub host_tenant: String,
    /// One user tenant (single token).
    pub user_tenant: Option<String>,
    /// A fixed list of user tenants (one token each).
    #[serde(default, deserialize_with = "crate::config::scalar::strings")]
    pub user_tenants: Vec<String>,
    /// Every tenant that authorized the app (one token each), discovered on every refresh.
    #[serde(default)]
    pub all_tenants: bool,
    /// Tenants per `/oauthTokens` call (1–5).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Tenants per `/userTenants` page (1–100).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// What happens to the files of a tenant that no longer authorizes the app.
    #[serde(default)]
    pub on_removed: OnRemoved,
}

fn default_base_url() -> String {
    "https://gateway.eu1.mindsphere.io/api/technicaltokenmanager/v3".into()
}
fn default_batch_size() -> usize {
    MAX_BATCH
}
fn default_page_size() -> usize {
    MAX_PAGE
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRemoved {
    #[default]
    Delete,
    Keep,
}

enum Mode {
    Single(String),
    List(Vec<String>),
    All,
}

impl MindSphereConfig {
    fn mode(&self) -> Mode {
        if self.all_tenants {
            Mode::All
        } else if !self.user_tenants.is_empty() {
            Mode::List(self.user_tenants.clone())
        } else {
            Mode::Single(self.user_tenant.clone().unwrap_or_default())
        }
    }

    pub fn is_multi_instance(&self) -> bool {
        self.all_tenants || !self.user_tenants.is_empty()
    }

    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let modes = [
            self.user_tenant.is_some(),
            !self.user_tenants.is_empty(),
            self.all_tenants,
        ];
        if modes.iter().filter(|m| **m).count() != 1 {
            problems.push((
                "user_tenant".into(),
                "give exactly one of `user_tenant`, `user_tenants` or `all_tenants: true`".into(),
            ));
        }
        match url::Url::parse(&self.base_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => problems.push((
                "base_url".into(),
                format!("`{}` is not an http(s) URL", self.base_url),
            )),
        }
        for (field, value) in [
            ("app_name", &self.app_name),
            ("app_version", &self.app_version),
            ("host_tenant", &self.host_tenant),
        ] {
            if value.trim().is_empty() {
                problems.push((field.into(), "must not be empty".into()));
            }
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            problems.push(("batch_size".into(), format!("must be 1 to {MAX_BATCH}: the service returns at most {MAX_BATCH} tokens per call")));
        }
        if !(1..=MAX_PAGE).contains(&self.page_size) {
            problems.push((
                "page_size".into(),
                format!(
                    "must be 1 to {MAX_PAGE}: the service lists at most {MAX_PAGE} tenants per page"
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, tenant) in self.user_tenants.iter().enumerate() {
            if let Err(message) = check_instance_name(tenant) {
                problems.push((format!("user_tenants[{i}]"), message));
            }
            if !seen.insert(tenant) {
                problems.push((
                    format!("user_tenants[{i}]"),
                    format!("`{tenant}` is listed twice"),
                ));
            }
        }
        problems
    }

    pub fn inline_secrets(&self) -> Vec<&'static str> {
        if self.client_secret.is_inline() {
            vec!["client_secret"]
        } else {
            vec![]
        }
    }

    pub fn build(
        &self,
        http: &HttpSettings,
        clients: &HttpClients,
    ) -> Result<MindSphereSource, BuildError> {
        let base = url::Url::parse(&self.base_url)
            .map_err(|e| BuildError::Invalid(format!("base_url: {e}")))?;
        Ok(MindSphereSource {
            client: clients.get(http)?,
            base: self.base_url.trim_end_matches('/').to_owned(),
            display_base: url_for_display(&base).trim_end_matches('/').to_owned(),
            timeout: http.timeout,
            mode: self.mode(),
            config: self.clone(),
            operator_token: Mutex::new(None),
        })
    }
}

pub struct MindSphereSource {
    client: reqwest::Client,
    base: String,
    display_base: String,
    timeout: Duration,
    mode: Mode,
    config: MindSphereConfig,
    /// The operator token used to list tenants, reused while it is valid.
    operator_token: Mutex<Option<Token>>,
}

/// The credentials of one fetch, read once.
struct Credentials {
    auth_key: SecretString,
    secrets: Vec<SecretString>,
}

impl MindSphereSource {
    pub async fn fetch(&self, ctx: &FetchContext<'_>) -> Result<Fetch, FetchError> {
        let credentials = self.credentials()?;
        match &self.mode {
            Mode::Single(tenant) => self
                .token(&credentials, tenant, ctx.now)
                .await
                .map(Fetch::single),
            Mode::List(tenants) => Ok(self.batches(&credentials, tenants.clone(), ctx).await),
            Mode::All => {
                let tenants = self.list_tenants(&credentials, ctx.now).await?;
                Ok(self.batches(&credentials, tenants, ctx).await)
            }
        }
    }

    fn credentials(&self) -> Result<Credentials, FetchError> {
        let id = self.config.client_id.load()?;
        let secret = self.config.client_secret.load()?;
        // The seed: "Basic " + base64(client_id:client_secret), no form-encoding.
        let auth_key = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", id.expose_secret(), secret.expose_secret()))
        );
        Ok(Credentials {
            auth_key: auth_key.into(),
            secrets: vec![id, secret],
        })
    }

    fn url(&self, path: &str) -> (String, String) {
        (
            format!("{}{path}", self.base),
            format!("{}{path}", self.display_base),
        )
    }

    async fn post(
        &self,
        credentials: &Credentials,
        path: &str,
        body: Value,
    ) -> Result<(Value, String), FetchError> {
        let (url, shown) = self.url(path);
        let mut key = reqwest::header::HeaderValue::from_str(credentials.auth_key.expose_secret())
            .map_err(|_| FetchError::Request {
                url: shown.clone(),
                detail: "client id or secret is not valid in a header".into(),
            })?;
        key.set_sensitive(true);
        let request = self
            .client
            .post(url)
            .header("X-SPACE-AUTH-KEY", key)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body);
        let reply = client::send(request, &shown, self.timeout).await?;
        Ok((self.json(credentials, reply, &shown)?, shown))
    }

    /// The body of a 2xx answer as JSON; any other answer as an error with the service's message.
    fn json(
        &self,
        credentials: &Credentials,
        reply: client::Reply,
        shown: &str,
    ) -> Result<Value, FetchError> {
        let secrets: Vec<&str> = credentials
            .secrets
            .iter()
            .map(|s| s.expose_secret())
            .collect();
        let reply = reply.success(shown, &secrets)?;
        serde_json::from_slice(&reply.body).map_err(|e| FetchError::InvalidResponse {
            url: shown.to_owned(),
            detail: format!("body is not JSON ({e})"),
        })
    }

    /// `POST /oauth/token` for one user tenant.
    async fn token(
        &self,
        credentials: &Credentials,
        user_tenant: &str,
        now: &(dyn Fn() -> SystemTime + Send + Sync),
    ) -> Result<Token, FetchError> {
        let c = &self.config;
        let body = json!({ "appName": c.app_name, "appVersion": c.app_version, "hostTenant": c.host_tenant, "userTenant": user_tenant });
        let (answer, shown) = self.post(credentials, "/oauth/token", body).await?;
        token_from(&answer, now(), &shown)
    }

    /// The operator token (user tenant = host tenant), reused while more than a minute is left.
    async fn operator_token(
        &self,
        credentials: &Credentials,
        now: &(dyn Fn() -> SystemTime + Send + Sync),
    ) -> Result<Token, FetchError> {
        let cached = self
            .operator_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(t) = cached.filter(|t| t.remaining(now()) > Duration::from_secs(60)) {
            return Ok(t);
        }
        let token = self
            .token(credentials, &self.config.host_tenant, now)
            .await?;
        *self
            .operator_token
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(token)
    }

    /// Every tenant id from `GET /userTenants`, page by page.
    async fn list_tenants(
        &self,
        credentials: &Credentials,
        now: &(dyn Fn() -> SystemTime + Send + Sync),
    ) -> Result<Vec<String>, FetchError> {
        let operator = self.operator_token(credentials, now).await?;
        let mut tenants = Vec::new();
        let mut seen = BTreeSet::new();
        for page in 0..MAX_PAGES {
            let path = format!("/userTenants?page={page}&size={}", self.config.page_size);
            let (url, shown) = self.url(&path);
            let shown = shown.split('?').next().unwrap_or_default().to_owned();
            let request = self
                .client
                .get(url)
                .bearer_auth(operator.secret())
                .header(reqwest::header::ACCEPT, "application/json");
            let reply = client::send(request, &shown, self.timeout).await?;
            if reply.status == 401 {
                // The operator token was revoked or has expired early: fetch a new one next time.
                *self
                    .operator_token
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            let answer = self.json(credentials, reply, &shown)?;
            let listed = tenant_page(&answer, page, &shown)?;
            for id in listed.ids {
                if seen.insert(id.clone()) {
                    tenants.push(id);
                }
            }
            if listed.last {
                return Ok(tenants);
            }
        }
        Err(FetchError::InvalidResponse {
            url: self.display_base.clone(),
            detail: format!("more than {MAX_PAGES} pages of tenants"),
        })
    }

    /// Tokens for the due tenants, `batch_size` per `/oauthTokens` call. A failed call fails its
    /// tenants only; after a 429 the remaining calls wait for the next attempt.
    async fn batches(
        &self,
        credentials: &Credentials,
        tenants: Vec<String>,
        ctx: &FetchContext<'_>,
    ) -> Fetch {
        let c = &self.config;
        let mut instances: Vec<(String, InstanceOutcome)> = Vec::with_capacity(tenants.len());
        let mut due = Vec::new();
        for tenant in tenants {
            if let Err(message) = check_instance_name(&tenant) {
                let url = self.display_base.clone();
                instances.push((
                    tenant,
                    InstanceOutcome::Failed(FetchError::InvalidResponse {
                        url,
                        detail: format!("tenant id {message}"),
                    }),
                ));
            } else if ctx.fresh.contains(&tenant) {
                instances.push((tenant, InstanceOutcome::Kept));
            } else {
                due.push(tenant);
            }
        }
        let mut throttled: Option<(String, Option<Duration>)> = None;
        for chunk in due.chunks(c.batch_size.clamp(1, MAX_BATCH)) {
            if let Some((url, retry_after)) = &throttled {
                for tenant in chunk {
                    let e = FetchError::Status {
                        url: url.clone(),
                        status: 429,
                        remote: Some("not attempted after an earlier 429".into()),
                        retry_after: *retry_after,
                    };
                    instances.push((tenant.clone(), InstanceOutcome::Failed(e)));
                }
                continue;
            }
            let body = json!({ "appName": c.app_name, "appVersion": c.app_version, "hostTenantId": c.host_tenant, "userTenantIds": chunk });
            match self.post(credentials, "/oauthTokens", body).await {
                Ok((answer, shown)) => {
                    instances.extend(batch_outcomes(&answer, chunk, (ctx.now)(), &shown))
                }
                Err(e) => {
                    if let FetchError::Status {
                        status: 429,
                        url,
                        retry_after,
                        ..
                    } = &e
                    {
                        throttled = Some((url.clone(), *retry_after));
                    }
                    let mut first = Some(e);
                    for tenant in chunk {
                        let e = first
                            .take()
                            .unwrap_or_else(|| self.same_failure(&instances));
                        instances.push((tenant.clone(), InstanceOutcome::Failed(e)));
                    }
                }
            }
        }
        Fetch { instances }
    }

    /// A copy of the last recorded failure (errors are not `Clone`: they may hold I/O errors).
    fn same_failure(&self, instances: &[(String, InstanceOutcome)]) -> FetchError {
        let described = instances.iter().rev().find_map(|(_, o)| match o {
            InstanceOutcome::Failed(e) => Some(e),
            _ => None,
        });
        match described {
            Some(FetchError::Status {
                url,
                status,
                remote,
                retry_after,
            }) => FetchError::Status {
                url: url.clone(),
                status: *status,
                remote: remote.clone(),
                retry_after: *retry_after,
            },
            Some(other) => FetchError::Request {
                url: self.display_base.clone(),
                detail: format!("batch failed: {other}"),
            },
            None => FetchError::Request {
                url: self.display_base.clone(),
                detail: "batch failed".into(),
            },
        }
    }
}

/// One page of a `GET /userTenants` answer.
#[derive(Debug)]
pub struct TenantPage {
    pub ids: Vec<String>,
    /// No page follows (empty page, or `page.number + 1 >= page.totalPages`).
    pub last: bool,
}

/// Reads page `page` of a `GET /userTenants` answer.
pub fn tenant_page(answer: &Value, page: usize, shown: &str) -> Result<TenantPage, FetchError> {
    let invalid = |detail: &str| FetchError::invalid(shown, detail);
    let entries = answer
        .get("userTenants")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("no `userTenants` list"))?;
    let ids = entries
        .iter()
        .map(|entry| {
            entry
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| invalid("a `userTenants` entry has no `id`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let total_pages = answer
        .pointer("/page/totalPages")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let number = answer
        .pointer("/page/number")
        .and_then(Value::as_u64)
        .unwrap_or(page as u64);
    let last = ids.is_empty() || number.saturating_add(1) >= total_pages;
    Ok(TenantPage { ids, last })
}

/// One outcome per requested tenant from an `/oauthTokens` answer.
pub fn batch_outcomes(
    answer: &Value,
    requested: &[String],
    now: SystemTime,
    shown: &str,
) -> Vec<(String, InstanceOutcome)> {
    let entries = answer.get("oauthTokens").and_then(Value::as_array);
    requested
        .iter()
        .map(|tenant| {
            let token = entries
                .and_then(|list| {
                    list.iter()
                        .find(|e| e.get("userTenantId").and_then(Value::as_str) == Some(tenant))
                })
                .and_then(|e| e.get("token"));
            let outcome = match token {
                Some(t) => match token_from(t, now, shown) {
                    Ok(token) => InstanceOutcome::Fetched(token),
                    Err(e) => InstanceOutcome::Failed(e),
                },
                None => InstanceOutcome::Failed(FetchError::InvalidResponse {
                    url: shown.to_owned(),
                    detail: format!("no token for tenant `{tenant}` in the answer"),
                }),
            };
            (tenant.clone(), outcome)
        })
        .collect()
}

/// A Token Management Service token object: expiry is `timestamp` (epoch milliseconds, often a
/// string) plus `expires_in`; without `timestamp`, now plus `expires_in`; else the JWT `exp`.
pub fn token_from(value: &Value, now: SystemTime, shown: &str) -> Result<Token, FetchError> {
    let invalid = |detail: String| FetchError::invalid(shown, detail);
    let access = value
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no `access_token`".into()))?;
    check_token_text(access).map_err(invalid)?;
    let number = |key: &str| match value.get(key) {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let expires_in = number("expires_in")
        .filter(|s| (0.0..1e9).contains(s))
        .map(Duration::from_secs_f64);
    let issued = number("timestamp")
        .filter(|ms| (0.0..1e14).contains(ms))
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms.round() as u64));
    let expires_at = match (issued, expires_in) {
        (Some(at), Some(ttl)) => Some(at + ttl),
        (None, Some(ttl)) => Some(now + ttl),
        _ => jwt::expiry(access),
    }
    .ok_or_else(|| invalid("no `expires_in` and the token is not a JWT with `exp`".into()))?;
    response::refuse_expired(expires_at, now, shown)?;
    let token_type = value
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or("bearer");
    Ok(Token::new(
        access.into(),
        token_type.chars().take(32).collect(),
        now,
        expires_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_timestamp_plus_expires_in() {
        let now = UNIX_EPOCH + Duration::from_secs(1_559_120_940);
        let t = token_from(
            &json!({"access_token": "a", "timestamp": "1559120938825", "expires_in": 1799}),
            now,
            "u",
        )
        .unwrap();
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_millis(1_559_120_938_825) + Duration::from_secs(1799)
        );
        let t = token_from(&json!({"access_token": "a", "expires_in": 60}), now, "u").unwrap();
        assert_eq!(t.expires_at, now + Duration::from_secs(60));
        let e = token_from(
            &json!({"access_token": "a", "timestamp": "1000", "expires_in": 5}),
            now,
            "u",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "expired_on_arrival");
        assert_eq!(
            token_from(&json!({"token": "a"}), now, "u")
                .unwrap_err()
                .reason(),
            "invalid_response"
        );
    }

    #[test]
    fn batch_answers_are_matched_to_tenants() {
        let now = SystemTime::now();
        let answer = json!({"oauthTokens": [
            {"userTenantId": "b", "token": {"access_token": "tb", "expires_in": 1799}},
            {"userTenantId": "a", "token": {"access_token": "ta", "expires_in": 1799}},
        ]});
        let out = batch_outcomes(&answer, &["a".into(), "b".into(), "c".into()], now, "u");
        assert!(
            matches!(&out[0], (k, InstanceOutcome::Fetched(t)) if k == "a" && t.secret() == "ta")
        );
        assert!(
            matches!(&out[1], (k, InstanceOutcome::Fetched(t)) if k == "b" && t.secret() == "tb")
        );
        assert!(
            matches!(&out[2], (k, InstanceOutcome::Failed(e)) if k == "c" && e.to_string().contains("no token for tenant `c`"))
        );
    }
}
