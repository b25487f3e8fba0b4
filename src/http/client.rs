//! The HTTP client every kind sends through: hyper's pooled client over rustls, with proxies
//! from the environment, no redirects followed, and the request built in place. It replaced
//! reqwest, whose layers (redirect policy, retry, `Url` ⇄ `Uri` on every request) were an
//! eighth of the agent's work per token refresh and did nothing it uses (BENCHMARKS.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use percent_encoding::percent_decode_str;

use super::proxy::{Proxies, ProxyConnector};
use super::tls::client_config;
use super::{HttpSettings, basic_auth};

type Pool = hyper_util::client::legacy::Client<HttpsConnector<ProxyConnector>, Full<Bytes>>;

const AGENT: HeaderValue =
    HeaderValue::from_static(concat!("token-agent/", env!("CARGO_PKG_VERSION")));

/// Why an HTTP client could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM certificate: {detail}")]
    Certificate { path: PathBuf, detail: String },
    #[error("client_cert/client_key: {detail}")]
    Identity { detail: String },
    #[error("cannot build HTTP client: {0}")]
    Build(String),
}

/// A connection pool for one set of [`HttpSettings`]; clones share it (one pointer each:
/// every source holds one).
#[derive(Clone)]
pub struct Client(Arc<Shared>);

struct Shared {
    pool: Pool,
    proxies: Proxies,
}

impl Client {
    pub fn new(settings: &HttpSettings) -> Result<Client, ClientBuildError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false); // https URIs reach it from the TLS layer
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(settings.timeout));
        let proxies = Proxies::from_env();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(settings)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(ProxyConnector::new(tcp, proxies.clone()));
        let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Client(Arc::new(Shared { pool, proxies })))
    }

    /// A request to `url`. An `http(s)` URL's user and password become Basic
    /// authentication, never part of the request line or `Host`. A URL given as text is
    /// parsed (and normalized) first; one that does not parse fails when sent.
    pub fn request<'a>(&self, method: Method, url: impl Into<Target<'a>>) -> RequestBuilder {
        let mut head = Request::builder().method(method);
        let mut error = None;
        let parsed;
        let url = match url.into() {
            Target::Parsed(url) => Some(url),
            Target::Text(text) => match super::http_url(text) {
                Ok(url) => {
                    parsed = url;
                    Some(&parsed)
                }
                Err(e) => {
                    error = Some(e.into());
                    None
                }
            },
        };
        let has_credentials =
            |url: &url::Url| !url.username().is_empty() || url.password().is_some();
        match url {
            Some(url) if !has_credentials(url) && url.fragment().is_none() => {
                head = head.uri(url.as_str());
            }
            Some(url) => {
                // The fragment never leaves the client (a `Uri` cannot even hold one).
                let mut bare = url.clone();
                bare.set_fragment(None);
                if has_credentials(url) {
                    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
                    let auth = basic_auth(
                        &decode(url.username()),
                        &decode(url.password().unwrap_or("")),
                    );
                    let _ = bare.set_username("");
                    let _ = bare.set_password(None);
                    head = head.header(AUTHORIZATION, auth);
                }
                head = head.uri(bare.as_str());
            }
            None => {}
        }
        RequestBuilder {
            client: self.clone(),
            head,
            body: Bytes::new(),
            error,
        }
    }

    pub fn get<'a>(&self, url: impl Into<Target<'a>>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    pub fn post<'a>(&self, url: impl Into<Target<'a>>) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// Sends a built request: proxy credentials added where the proxy takes the request
    /// itself; `Accept: */*` and the agent's `User-Agent` unless the request set its own.
    pub(super) async fn execute(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let headers = request.headers_mut();
        headers
            .entry(ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        headers.entry(USER_AGENT).or_insert(AGENT);
        if let Some(auth) = self.0.proxies.authorization(request.uri()) {
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        self.0.pool.request(request).await
    }
}

/// Where a request goes: a URL parsed at start (the common case: no parse per request) or
/// text rendered for this request.
pub enum Target<'a> {
    Parsed(&'a url::Url),
    Text(&'a str),
}

impl<'a> From<&'a url::Url> for Target<'a> {
    fn from(url: &'a url::Url) -> Self {
        Target::Parsed(url)
    }
}

impl<'a> From<&'a str> for Target<'a> {
    fn from(text: &'a str) -> Self {
        Target::Text(text)
    }
}

impl<'a> From<&'a String> for Target<'a> {
    fn from(text: &'a String) -> Self {
        Target::Text(text)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request being built; a bad URL or header surfaces when it is sent, as with reqwest.
pub struct RequestBuilder {
    client: Client,
    head: http::request::Builder,
    body: Bytes,
    error: Option<BoxError>,
}

impl RequestBuilder {
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.head = self.head.header(name, value);
        self
    }

    /// `Authorization: Bearer <token>`, marked sensitive. A token that cannot be a header
    /// value fails the request when sent (the error never shows the token).
    pub fn bearer_auth(mut self, token: &str) -> Self {
        match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.header(AUTHORIZATION, value)
            }
            Err(e) => {
                self.error.get_or_insert(e.into());
                self
            }
        }
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// An `application/x-www-form-urlencoded` body.
    pub fn form(self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .body(body)
    }

    /// An `application/json` body.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Self {
        // Serializing maps with string keys and plain values cannot fail.
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
    }

    pub(super) fn build(self) -> Result<(Client, Request<Full<Bytes>>), BoxError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let request = self.head.body(Full::new(self.body))?;
        Ok((self.client, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new(&HttpSettings {
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert: None,
            client_key: None,
        })
        .unwrap()
    }

    #[test]
    fn credentials_in_a_url_become_basic_authentication() {
        let url = url::Url::parse("https://us%40er:p%3Ass+w@idp.example:8443/token?a=1").unwrap();
        let (_, request) = client().get(&url).build().unwrap();
        assert_eq!(request.uri(), "https://idp.example:8443/token?a=1");
        let auth = &request.headers()[AUTHORIZATION];
        assert!(auth.is_sensitive());
        assert_eq!(auth, &basic_auth("us@er", "p:ss+w"));
    }

    #[test]
    fn bodies_carry_their_content_type() {
        let url = url::Url::parse("http://127.0.0.1/t").unwrap();
        let (_, form) = client()
            .post(&url)
            .form(&[("grant_type", "client_credentials"), ("scope", "a b&c")])
            .build()
            .unwrap();
        assert_eq!(
            form.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        let (_, json) = client().post(&url).json(&["x"]).build().unwrap();
        assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
        let (_, bearer) = client().get(&url).bearer_auth("t0k").build().unwrap();
        assert!(bearer.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(bearer.headers()[AUTHORIZATION], "Bearer t0k");
        let err = client()
            .get(&url)
            .bearer_auth("SECRET\n")
            .build()
            .err()
            .unwrap();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn a_bad_header_is_an_error_when_sent_not_a_panic() {
        let url = url::Url::parse("http://127.0.0.1/t").unwrap();
        assert!(client().get(&url).header("bad name", "v").build().is_err());
        assert!(
            client()
                .get(&url)
                .header("x", "line\nbreak")
                .build()
                .is_err()
        );
        let err = client().get("ftp://127.0.0.1/t").build().err().unwrap();
        assert_eq!(err.to_string(), "scheme `ftp` is not http or https");
        assert!(client().get("not a url").build().is_err());
        let (_, fragment) = client().get("http://127.0.0.1/t#top").build().unwrap();
        assert_eq!(fragment.uri(), "http://127.0.0.1/t");
        assert!(fragment.headers().get(AUTHORIZATION).is_none());
        let (_, rendered) = client().get("http://127.0.0.1/a b").build().unwrap();
        assert_eq!(
            rendered.uri(),
            "http://127.0.0.1/a%20b",
            "normalized as reqwest did"
        );
    }
}
