//! The HTTP client for broker calls: resolution is pinned to the addresses the policy
//! checked, redirects are never followed, bodies are capped, and every stage times out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use url::Url;

use super::{OutboundPolicy, SsrfError, bare_host};

/// Default cap on a response body, in bytes (1 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A boxed error, as hyper and tower pass them around.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the connector could not hand back a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The policy refused the target.
    #[error(transparent)]
    Refused(#[from] SsrfError),
    /// Resolution and connection took longer than the connect timeout.
    #[error("connecting to the remote host timed out")]
    Timeout,
    /// Every checked address refused or failed the TCP connection.
    #[error("could not connect to the remote host")]
    Unreachable {
        /// What went wrong on the last address tried.
        kind: io::ErrorKind,
    },
}

/// Why an outbound request failed. `Display` is safe to show to the client.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The policy refused the URL or an address it resolves to.
    #[error(transparent)]
    Refused(#[from] SsrfError),
    /// The host did not connect or answer within its timeout.
    #[error("the remote host did not answer in time")]
    Timeout,
    /// No TCP connection could be made.
    #[error("could not connect to the remote host")]
    Unreachable,
    /// The host answered with a 3xx, which is never followed.
    #[error("the remote host answered with a redirect ({status}), which is not followed")]
    Redirected {
        /// The 3xx status.
        status: StatusCode,
    },
    /// The response body is larger than the client's cap.
    #[error("the remote host's response is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// TLS, HTTP or body failure; the detail is in the source, for logs.
    #[error("the request to the remote host failed")]
    Transport(#[source] BoxError),
}

impl From<ConnectError> for OutboundError {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Refused(refused) => Self::Refused(refused),
            ConnectError::Timeout => Self::Timeout,
            ConnectError::Unreachable { .. } => Self::Unreachable,
        }
    }
}

/// A connector for hyper's client that resolves the host itself, refuses the target if any
/// address is not allowed by the policy, and connects by TCP to a checked address without
/// resolving again.
#[derive(Debug, Clone)]
pub struct SafeConnector {
    policy: Arc<OutboundPolicy>,
    connect_timeout: Duration,
}

impl SafeConnector {
    /// A connector enforcing `policy`, giving resolution plus TCP connection `connect_timeout`.
    pub fn new(policy: Arc<OutboundPolicy>, connect_timeout: Duration) -> Self {
        Self {
            policy,
            connect_timeout,
        }
    }

    async fn connect(
        policy: Arc<OutboundPolicy>,
        connect_timeout: Duration,
        uri: Uri,
    ) -> Result<TokioIo<TcpStream>, ConnectError> {
        policy.check_scheme(uri.scheme_str().unwrap_or_default())?;
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or(SsrfError::MissingHost)?;
        let bare = bare_host(host);
        policy.check_host_name(bare)?;
        let port = match (uri.port_u16(), uri.scheme_str()) {
            (Some(port), _) => port,
            (None, Some("http")) => 80,
            (None, _) => 443,
        };
        let attempt = async {
            let addresses = policy.resolve(host, port).await?;
            let mut last_error = io::ErrorKind::NotFound;
            // Addresses are tried in resolver order; each one was checked above.
            for address in addresses {
                match TcpStream::connect(address).await {
                    Ok(stream) => {
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%error, "could not set TCP_NODELAY");
                        }
                        return Ok(TokioIo::new(stream));
                    }
                    Err(error) => {
                        tracing::debug!(%error, %address, "outbound connection failed");
                        last_error = error.kind();
                    }
                }
            }
            Err(ConnectError::Unreachable { kind: last_error })
        };
        tokio::time::timeout(connect_timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout)?
    }
}

impl tower::Service<Uri> for SafeConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(Self::connect(
            Arc::clone(&self.policy),
            self.connect_timeout,
            uri,
        ))
    }
}

/// An HTTP client for users' broker hosts that enforces an [`OutboundPolicy`] on every call,
/// never follows redirects, caps response bodies and times out.
#[derive(Debug, Clone)]
pub struct SafeClient {
    policy: Arc<OutboundPolicy>,
    client: Client<HttpsConnector<SafeConnector>, Full<Bytes>>,
    request_timeout: Duration,
    max_response_bytes: usize,
}

impl SafeClient {
    /// A client enforcing `policy`, with `connect_timeout` for resolution plus TCP connection
    /// and `request_timeout` for the whole exchange, TLS and body included. Responses are
    /// capped at [`DEFAULT_MAX_RESPONSE_BYTES`]. Certificates are checked against the
    /// Mozilla roots (webpki-roots).
    pub fn new(
        policy: Arc<OutboundPolicy>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        let connector = SafeConnector::new(Arc::clone(&policy), connect_timeout);
        let tls = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("ring's default provider supports rustls' default protocol versions");
        let tls = if policy.allows_http() {
            tls.https_or_http()
        } else {
            tls.https_only()
        };
        let connector = tls.enable_http1().wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            policy,
            client,
            request_timeout,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// The same client with responses capped at `limit` bytes.
    pub fn with_max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// POSTs `body` as JSON to `url` and returns the status and body of a non-redirect answer.
    ///
    /// # Errors
    /// [`OutboundError::Refused`] when the URL or a resolved address breaks the policy,
    /// [`OutboundError::Redirected`] for any 3xx, [`OutboundError::ResponseTooLarge`],
    /// [`OutboundError::Timeout`], [`OutboundError::Unreachable`], [`OutboundError::Transport`].
    pub async fn post_json(
        &self,
        url: &Url,
        body: &serde_json::Value,
    ) -> Result<(StatusCode, Bytes), OutboundError> {
        let url = self.policy.check_url(url.as_str())?;
        let uri: Uri = url.as_str().parse().map_err(|_| SsrfError::InvalidUrl)?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("rampart/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| SsrfError::InvalidUrl)?;
        tokio::time::timeout(self.request_timeout, self.exchange(request))
            .await
            .map_err(|_| OutboundError::Timeout)?
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), OutboundError> {
        let response = self.client.request(request).await.map_err(client_error)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(OutboundError::Redirected { status });
        }
        let limit = self.max_response_bytes;
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|error| {
                if error.downcast_ref::<LengthLimitError>().is_some() {
                    OutboundError::ResponseTooLarge { limit }
                } else {
                    OutboundError::Transport(error)
                }
            })?;
        Ok((status, body.to_bytes()))
    }
}

/// Recovers the connector's own error from hyper's wrapping, if it is in the chain.
fn client_error(error: hyper_util::client::legacy::Error) -> OutboundError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(connect) = current.downcast_ref::<ConnectError>() {
            return connect.clone().into();
        }
        source = current.source();
    }
    OutboundError::Transport(Box::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> OutboundPolicy {
        OutboundPolicy::default()
    }

    #[tokio::test]
    async fn the_connector_refuses_forbidden_literal_addresses_before_dialing() {
        use tower::ServiceExt;
        let connector = SafeConnector::new(Arc::new(strict()), Duration::from_secs(5));
        for uri in [
            "https://127.0.0.1/",
            "https://[::1]:8443/",
            "https://169.254.169.254/",
        ] {
            let result = connector.clone().oneshot(uri.parse().unwrap()).await;
            assert!(
                matches!(
                    result,
                    Err(ConnectError::Refused(SsrfError::ForbiddenAddress { .. }))
                ),
                "{uri}: {result:?}"
            );
        }
        let result = connector
            .clone()
            .oneshot("http://1.1.1.1/".parse().unwrap())
            .await;
        assert!(
            matches!(
                result,
                Err(ConnectError::Refused(SsrfError::SchemeNotAllowed { .. }))
            ),
            "http without allow_http: {result:?}"
        );
    }

    #[tokio::test]
    async fn post_json_refuses_forbidden_urls_before_any_connection() {
        let client = SafeClient::new(
            Arc::new(strict()),
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        for raw in [
            "https://127.0.0.1/api/v1/funds",
            "https://user:pw@example.com/",
            "http://example.com/",
        ] {
            let url = Url::parse(raw).unwrap();
            let result = client.post_json(&url, &serde_json::json!({})).await;
            assert!(
                matches!(result, Err(OutboundError::Refused(_))),
                "{raw}: {result:?}"
            );
        }
    }
}
