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

use ::http::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::response::{self, check_token_text};
use super::{
    BoxFuture, BuildContext, BuildError, Fetch, FetchContext, FetchError, InstanceOutcome, Now,
    Problems, Source, SourceKind, jwt,
};
use crate::credential::CredentialRef;
use crate::http::{self, HttpError};
use crate::names::{self, InstanceId};
use crate::redact::url_for_display;
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
    pub client_id: CredentialRef,
    pub client_secret: CredentialRef,
    pub app_name: String,
    pub app_version: String,
    pub host_tenant: String,
    /// One user tenant (single token).
    pub user_tenant: Option<String>,
    /// A fixed list of user tenants (one token each).
    #[serde(default, deserialize_with = "crate::de::strings")]
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

}

impl SourceKind for MindSphereConfig {
    fn is_multi_instance(&self) -> bool {
        self.all_tenants || !self.user_tenants.is_empty()
    }

    /// Discovery and batches: many requests in one fetch.
    fn fetch_bound(&self, http_timeout: Duration) -> Duration {
        if self.is_multi_instance() {
            http_timeout * 64
        } else {
            http_timeout
        }
    }

    fn removes_gone_instances(&self) -> bool {
        self.on_removed == OnRemoved::Delete
    }

    fn remote_endpoint(&self) -> Option<(&'static str, &str)> {
        Some(("base_url", &self.base_url))
    }

    fn check(&self) -> Problems {
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
        if http::http_url(&self.base_url).is_err() {
            problems.push((
                "base_url".into(),
                format!("`{}` is not an http(s) URL", self.base_url),
            ));
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
            if let Err(message) = InstanceId::tenant(tenant) {
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

    fn inline_secrets(&self) -> Vec<String> {
        if self.client_secret.is_inline() {
            vec!["client_secret".into()]
        } else {
            vec![]
        }
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let base = http::http_url(&self.base_url)
            .map_err(|e| BuildError::Invalid(format!("base_url: {e}")))?;
        Ok(Box::new(MindSphereSource {
            client: ctx.clients.get(ctx.http)?,
            base: self.base_url.trim_end_matches('/').to_owned(),
            display_url: url_for_display(&base).trim_end_matches('/').to_owned(),
            timeout: ctx.http.timeout,
            mode: self.mode(),
            config: self.clone(),
            operator_token: Mutex::new(None),
        }))
    }
}

pub struct MindSphereSource {
    client: http::Client,
    base: String,
    display_url: String,
    timeout: Duration,
    mode: Mode,
    config: MindSphereConfig,
    /// The operator token used to list tenants, reused while it is valid.
    operator_token: Mutex<Option<Token>>,
}

/// The credentials of one fetch, read once.
struct Credentials {
    /// `X-SPACE-AUTH-KEY`: `Basic base64(client_id:client_secret)`, no form-encoding.
    auth_key: HeaderValue,
    secrets: Vec<SecretString>,
}

impl Source for MindSphereSource {
    fn fetch<'a>(&'a self, ctx: &'a FetchContext<'a>) -> BoxFuture<'a, Result<Fetch, FetchError>> {
        Box::pin(async move {
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
        })
    }
}

impl MindSphereSource {
    fn credentials(&self) -> Result<Credentials, FetchError> {
        let id = self.config.client_id.load()?;
        let secret = self.config.client_secret.load()?;
        Ok(Credentials {
            auth_key: http::basic_auth(id.expose_secret(), secret.expose_secret()),
            secrets: vec![id, secret],
        })
    }

    fn url(&self, path: &str) -> (String, String) {
        (
            format!("{}{path}", self.base),
            format!("{}{path}", self.display_url),
        )
    }

    async fn post(
        &self,
        credentials: &Credentials,
        path: &str,
        body: Value,
    ) -> Result<(Value, String), FetchError> {
        let (url, display_url) = self.url(path);
        let request = self
            .client
            .post(&url)
            .header("X-SPACE-AUTH-KEY", credentials.auth_key.clone())
            .header(::http::header::ACCEPT, "application/json")
            .json(&body);
        let reply = http::send(request, &display_url, self.timeout).await?;
        Ok((self.json(credentials, reply, &display_url)?, display_url))
    }

    /// The body of a 2xx answer as JSON; any other answer as an error with the service's message.
    fn json(
        &self,
        credentials: &Credentials,
        reply: http::Reply,
        display_url: &str,
    ) -> Result<Value, FetchError> {
        let secrets: Vec<&str> = credentials
            .secrets
            .iter()
            .map(|s| s.expose_secret())
            .collect();
        let reply = reply.success(display_url, &secrets)?;
        serde_json::from_slice(&reply.body).map_err(|e| FetchError::InvalidResponse {
            url: display_url.to_owned(),
            detail: format!("body is not JSON ({e})"),
        })
    }

    /// `POST /oauth/token` for one user tenant.
    async fn token(
        &self,
        credentials: &Credentials,
        user_tenant: &str,
        now: &Now,
    ) -> Result<Token, FetchError> {
        let c = &self.config;
        let body = json!({ "appName": c.app_name, "appVersion": c.app_version, "hostTenant": c.host_tenant, "userTenant": user_tenant });
        let (answer, display_url) = self.post(credentials, "/oauth/token", body).await?;
        token_from(&answer, now(), &display_url)
    }

    /// The operator token (user tenant = host tenant), reused while more than a minute is left.
    async fn operator_token(
        &self,
        credentials: &Credentials,
        now: &Now,
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
        now: &Now,
    ) -> Result<Vec<String>, FetchError> {
        let operator = self.operator_token(credentials, now).await?;
        let mut tenants = Vec::new();
        let mut seen = BTreeSet::new();
        for page in 0..MAX_PAGES {
            let path = format!("/userTenants?page={page}&size={}", self.config.page_size);
            let (url, display_url) = self.url(&path);
            let display_url = display_url.split('?').next().unwrap_or_default().to_owned();
            let request = self
                .client
                .get(&url)
                .bearer_auth(operator.secret())
                .header(::http::header::ACCEPT, "application/json");
            let reply = http::send(request, &display_url, self.timeout).await?;
            if reply.status == 401 {
                // The operator token was revoked or has expired early: fetch a new one next time.
                *self
                    .operator_token
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            let answer = self.json(credentials, reply, &display_url)?;
            let listed = tenant_page(&answer, page, &display_url)?;
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
            url: self.display_url.clone(),
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
        let mut fetch = Fetch::default();
        let instances = &mut fetch.instances;
        instances.reserve(tenants.len());
        let mut due = Vec::new();
        for tenant in tenants {
            match InstanceId::tenant(&tenant) {
                Err(message) => {
                    let e = FetchError::invalid(&self.display_url, format!("tenant id {message}"));
                    fetch.refused.push((names::shown(&tenant), e));
                }
                Ok(id) if ctx.not_due.contains(&id) => instances.push((id, InstanceOutcome::Kept)),
                Ok(id) => due.push(id),
            }
        }
        let mut throttled: Option<(String, Option<Duration>)> = None;
        for chunk in due.chunks(c.batch_size.clamp(1, MAX_BATCH)) {
            if let Some((url, retry_after)) = &throttled {
                for tenant in chunk {
                    let e = HttpError::Status {
                        url: url.clone(),
                        status: 429,
                        remote: Some("not attempted after an earlier 429".into()),
                        retry_after: *retry_after,
                    };
                    instances.push((tenant.clone(), InstanceOutcome::Failed(e.into())));
                }
                continue;
            }
            let body = json!({ "appName": c.app_name, "appVersion": c.app_version, "hostTenantId": c.host_tenant, "userTenantIds": chunk });
            match self.post(credentials, "/oauthTokens", body).await {
                Ok((answer, display_url)) => {
                    instances.extend(batch_outcomes(&answer, chunk, (ctx.now)(), &display_url))
                }
                Err(e) => {
                    if let FetchError::Http(HttpError::Status {
                        status: 429,
                        url,
                        retry_after,
                        ..
                    }) = &e
                    {
                        throttled = Some((url.clone(), *retry_after));
                    }
                    let mut first = Some(e);
                    for tenant in chunk {
                        let e = first
                            .take()
                            .unwrap_or_else(|| self.same_failure(instances));
                        instances.push((tenant.clone(), InstanceOutcome::Failed(e)));
                    }
                }
            }
        }
        fetch
    }

    /// A copy of the last recorded failure (errors are not `Clone`: they may hold I/O errors).
    fn same_failure(&self, instances: &[(InstanceId, InstanceOutcome)]) -> FetchError {
        let described = instances.iter().rev().find_map(|(_, o)| match o {
            InstanceOutcome::Failed(e) => Some(e),
            _ => None,
        });
        let copy = match described {
            Some(FetchError::Http(HttpError::Status {
                url,
                status,
                remote,
                retry_after,
            })) => HttpError::Status {
                url: url.clone(),
                status: *status,
                remote: remote.clone(),
                retry_after: *retry_after,
            },
            Some(other) => HttpError::Request {
                url: self.display_url.clone(),
                detail: format!("batch failed: {other}"),
            },
            None => HttpError::Request {
                url: self.display_url.clone(),
                detail: "batch failed".into(),
            },
        };
        copy.into()
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
pub fn tenant_page(answer: &Value, page: usize, display_url: &str) -> Result<TenantPage, FetchError> {
    let invalid = |detail: &str| FetchError::invalid(display_url, detail);
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
    requested: &[InstanceId],
    now: SystemTime,
    display_url: &str,
) -> Vec<(InstanceId, InstanceOutcome)> {
    let entries = answer.get("oauthTokens").and_then(Value::as_array);
    requested
        .iter()
        .map(|tenant| {
            let token = entries
                .and_then(|list| {
                    list.iter()
                        .find(|e| {
                            e.get("userTenantId").and_then(Value::as_str) == Some(tenant.as_str())
                        })
                })
                .and_then(|e| e.get("token"));
            let outcome = match token {
                Some(t) => match token_from(t, now, display_url) {
                    Ok(token) => InstanceOutcome::Fetched(token),
                    Err(e) => InstanceOutcome::Failed(e),
                },
                None => InstanceOutcome::Failed(FetchError::InvalidResponse {
                    url: display_url.to_owned(),
                    detail: format!("no token for tenant `{tenant}` in the answer"),
                }),
            };
            (tenant.clone(), outcome)
        })
        .collect()
}

/// A Token Management Service token object: expiry is `timestamp` (epoch milliseconds, often a
/// string) plus `expires_in`; without `timestamp`, now plus `expires_in`; else the JWT `exp`.
pub fn token_from(value: &Value, now: SystemTime, display_url: &str) -> Result<Token, FetchError> {
    let invalid = |detail: String| FetchError::invalid(display_url, detail);
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
    response::refuse_expired(expires_at, now, display_url)?;
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
    use crate::error::Reason;

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
        let requested = ["a", "b", "c"].map(|t| InstanceId::tenant(t).unwrap());
        let out = batch_outcomes(&answer, &requested, now, "u");
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
