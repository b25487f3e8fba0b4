//! Proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, read
//! as curl reads them by hyper-util's matcher): an `https` destination is reached through a
//! `CONNECT` tunnel, an `http` one by sending the request itself to the proxy. Only `http://`
//! proxies are spoken to; the tunnel carries TLS end to end to the issuer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy rules of this process, read once per client like reqwest did.
#[derive(Clone)]
pub struct Proxies(Arc<Matcher>);

impl Proxies {
    pub fn from_env() -> Self {
        Proxies(Arc::new(Matcher::from_env()))
    }

    #[cfg(test)]
    pub fn new(matcher: Matcher) -> Self {
        Proxies(Arc::new(matcher))
    }

    /// The `Proxy-Authorization` a plain-`http` request to `dst` carries to its proxy.
    pub fn authorization(&self, dst: &Uri) -> Option<HeaderValue> {
        if dst.scheme_str() != Some("http") {
            return None; // https: the credentials go in the CONNECT, not to the issuer
        }
        self.0.intercept(dst)?.basic_auth().cloned()
    }
}

/// TCP to the destination, to the proxy, or through a proxy's tunnel: what a destination's
/// rules say. TLS is layered on top by the caller.
#[derive(Clone)]
pub struct ProxyConnector {
    tcp: HttpConnector,
    proxies: Proxies,
}

impl ProxyConnector {
    pub fn new(tcp: HttpConnector, proxies: Proxies) -> Self {
        ProxyConnector { tcp, proxies }
    }
}

impl Service<Uri> for ProxyConnector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let Some(proxy) = self.proxies.0.intercept(&dst) else {
            return Box::pin(async move {
                let io = tcp.call(dst).await?;
                Ok(Stream { io, proxied: false })
            });
        };
        let proxy_uri = proxy.uri().clone();
        let auth = proxy.basic_auth().cloned();
        Box::pin(async move {
            if proxy_uri.scheme_str() != Some("http") {
                return Err(format!(
                    "proxy {} is not an http:// URL (only http:// proxies are supported)",
                    without_credentials(&proxy_uri)
                )
                .into());
            }
            if dst.scheme_str() == Some("https") {
                let mut tunnel = Tunnel::new(proxy_uri, tcp);
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth);
                }
                let io = tunnel.call(dst).await?;
                Ok(Stream { io, proxied: false })
            } else {
                let io = tcp.call(proxy_uri).await?;
                Ok(Stream { io, proxied: true })
            }
        })
    }
}

/// `scheme://host:port` of a proxy URI, never its user or password.
fn without_credentials(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) => format!("{}://{host}:{port}", uri.scheme_str().unwrap_or_default()),
        None => format!("{}://{host}", uri.scheme_str().unwrap_or_default()),
    }
}

/// A TCP connection that knows whether it leads to a forwarding proxy, so hyper sends the
/// request in absolute form there.
pub struct Stream {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_credentials_go_only_to_a_plain_http_proxy_request() {
        let proxies = Proxies::new(
            Matcher::builder()
                .all("http://u:p@127.0.0.1:3128")
                .no("localhost")
                .build(),
        );
        let auth = |dst: &str| proxies.authorization(&dst.parse().unwrap());
        assert_eq!(auth("http://idp.example/token").unwrap(), "Basic dTpw");
        assert_eq!(
            auth("https://idp.example/token"),
            None,
            "sent in the CONNECT"
        );
        assert_eq!(auth("http://localhost/token"), None, "NO_PROXY");
    }

    #[test]
    fn a_proxy_is_shown_without_its_credentials() {
        let uri: Uri = "https://u:secret@proxy.example:8443".parse().unwrap();
        assert_eq!(without_credentials(&uri), "https://proxy.example:8443");
    }
}
