//! Outbound-address policy and an SSRF-safe HTTP client for calls to users' broker hosts.
//!
//! [`OutboundPolicy::check_url`] vets a `host_url` when an account is saved (400 on refusal);
//! [`SafeClient`] repeats every check when it connects: [`SafeConnector`] resolves the host
//! itself, refuses if any address is not public, and dials exactly the checked address, so
//! DNS rebinding cannot slip past. Redirects are never followed and responses are capped.
//! Refusals are [`SsrfError`], transport failures [`OutboundError`]; their `Display` shows no
//! address beyond what the user typed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use tokio::net::TcpStream;
use url::{Host, Url};

/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Default cap on a response body, in bytes (1 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A boxed error, as hyper and tower pass them around.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a client is told when the host is not public or does not resolve; one message for
/// both, so that refusals do not map internal DNS.
pub const NOT_PUBLIC: &str = "host must resolve to public addresses only";

/// Why an outbound URL or address was refused. `Display` is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The URL does not parse, or contains whitespace or control characters.
    #[error("URL is not valid")]
    InvalidUrl,
    /// The URL is longer than [`MAX_URL_LEN`].
    #[error("URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    /// The scheme is not `https` (or `http` where `accounts.allow_http` is set).
    #[error("URL scheme must be {allowed}")]
    SchemeNotAllowed {
        /// The schemes accepted, for the message.
        allowed: &'static str,
    },
    /// The URL carries a user name or password.
    #[error("URL must not contain a user name or password")]
    Credentials,
    /// The URL carries a `#fragment`.
    #[error("URL must not contain a fragment")]
    Fragment,
    /// The URL has no host.
    #[error("URL must have a host")]
    MissingHost,
    /// The host does not match `accounts.allowed_hosts`.
    #[error("host is not in the list of allowed hosts")]
    HostNotAllowed,
    /// The host is, or resolves to, an address that is not public. The address is kept for
    /// logs and left out of the message.
    // The same message as `Unresolvable`: telling the two apart would let any user probe
    // which internal names exist.
    #[error("{NOT_PUBLIC}")]
    ForbiddenAddress {
        /// The refused address.
        address: IpAddr,
    },
    /// The host name does not resolve. Shown to clients exactly like `ForbiddenAddress`.
    #[error("{NOT_PUBLIC}")]
    Unresolvable,
}

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

/// `[accounts]` rules for outbound calls: schemes, host globs, and networks let through.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    allow_http: bool,
    /// `None` when `allowed_hosts` is empty: any public host.
    allowed_hosts: Option<GlobSet>,
    allowed_networks: Vec<IpNet>,
}

impl Default for OutboundPolicy {
    /// The strictest policy: `https` only, any public host, no private network.
    fn default() -> Self {
        Self {
            allow_http: false,
            allowed_hosts: None,
            allowed_networks: Vec::new(),
        }
    }
}

impl OutboundPolicy {
    /// Builds the policy from `accounts.allow_http`, `accounts.allowed_hosts` (case-insensitive
    /// globs such as `*.openalgo.in`; empty means any public host) and
    /// `accounts.allowed_networks` (CIDRs let through the address rules).
    ///
    /// # Errors
    /// A message naming the first empty or invalid glob.
    pub fn new(
        allow_http: bool,
        allowed_hosts: &[String],
        allowed_networks: &[IpNet],
    ) -> Result<Self, String> {
        let allowed_hosts = if allowed_hosts.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for (index, pattern) in allowed_hosts.iter().enumerate() {
                let pattern = pattern.trim();
                if pattern.is_empty() {
                    return Err(format!("accounts.allowed_hosts[{index}] is empty"));
                }
                let glob = GlobBuilder::new(pattern)
                    .case_insensitive(true)
                    .build()
                    .map_err(|error| {
                        format!("accounts.allowed_hosts[{index}] {pattern:?} is not a valid glob: {error}")
                    })?;
                set.add(glob);
            }
            Some(set.build().map_err(|error| {
                format!("accounts.allowed_hosts could not be compiled: {error}")
            })?)
        };
        Ok(Self {
            allow_http,
            allowed_hosts,
            allowed_networks: allowed_networks.iter().map(IpNet::trunc).collect(),
        })
    }

    /// Whether plain `http` URLs are accepted.
    pub fn allows_http(&self) -> bool {
        self.allow_http
    }

    /// Checks a URL without touching the network: length, scheme, no credentials, no
    /// fragment, an allowed host, and a public address when the host is a literal IP.
    /// Odd IPv4 spellings (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`) are normalised
    /// by WHATWG parsing first, so they meet the address rules as `127.0.0.1`.
    ///
    /// # Errors
    /// The [`SsrfError`] of the first rule broken.
    pub fn check_url(&self, raw: &str) -> Result<Url, SsrfError> {
        if raw.len() > MAX_URL_LEN {
            return Err(SsrfError::TooLong);
        }
        // WHATWG parsing silently strips tabs, newlines and edge spaces; refuse them instead
        // so the stored URL is exactly what was checked.
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SsrfError::InvalidUrl);
        }
        let url = Url::parse(raw).map_err(|_| SsrfError::InvalidUrl)?;
        self.check_scheme(url.scheme())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SsrfError::Credentials);
        }
        if url.fragment().is_some() {
            return Err(SsrfError::Fragment);
        }
        match url.host() {
            None => return Err(SsrfError::MissingHost),
            Some(Host::Domain("")) => return Err(SsrfError::MissingHost),
            Some(Host::Domain(domain)) => self.check_host_name(domain)?,
            Some(Host::Ipv4(ip)) => {
                self.check_host_name(&ip.to_string())?;
                self.check_ip(IpAddr::V4(ip))?;
            }
            Some(Host::Ipv6(ip)) => {
                self.check_host_name(&ip.to_string())?;
                self.check_ip(IpAddr::V6(ip))?;
            }
        }
        Ok(url)
    }

    /// [`OutboundPolicy::check_url`], then resolves the host and checks every address, for a
    /// 400 when an account is saved. [`SafeClient`] checks again when it connects.
    ///
    /// # Errors
    /// As [`OutboundPolicy::check_url`], plus [`SsrfError::Unresolvable`] and
    /// [`SsrfError::ForbiddenAddress`] for a resolved address.
    pub async fn check_url_resolved(&self, raw: &str) -> Result<Url, SsrfError> {
        let url = self.check_url(raw)?;
        let host = url.host_str().ok_or(SsrfError::MissingHost)?;
        let port = url.port_or_known_default().ok_or(SsrfError::InvalidUrl)?;
        self.resolve(host, port).await?;
        Ok(url)
    }

    /// Refuses `ip` unless it is public or inside `accounts.allowed_networks`.
    ///
    /// # Errors
    /// [`SsrfError::ForbiddenAddress`].
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        let canonical = ip.to_canonical();
        let let_through = self
            .allowed_networks
            .iter()
            .any(|network| network.contains(&ip) || network.contains(&canonical));
        if let_through || is_public(ip) {
            Ok(())
        } else {
            Err(SsrfError::ForbiddenAddress { address: ip })
        }
    }

    /// Refuses the whole set if any address in it is forbidden, or if it is empty.
    ///
    /// # Errors
    /// [`SsrfError::ForbiddenAddress`] for the first forbidden address,
    /// [`SsrfError::Unresolvable`] for an empty set.
    pub fn check_resolved(&self, addresses: &[SocketAddr]) -> Result<(), SsrfError> {
        if addresses.is_empty() {
            return Err(SsrfError::Unresolvable);
        }
        addresses
            .iter()
            .try_for_each(|address| self.check_ip(address.ip()))
    }

    /// Resolves `host` (a name, a literal IP, or a bracketed IPv6 literal) and checks every
    /// address it yields. Resolution runs on tokio's blocking pool, never on a worker.
    ///
    /// # Errors
    /// [`SsrfError::Unresolvable`], [`SsrfError::ForbiddenAddress`].
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(host);
        let addresses: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else {
            tokio::net::lookup_host((bare, port))
                .await
                .map_err(|error| {
                    tracing::debug!(%error, "outbound host did not resolve");
                    SsrfError::Unresolvable
                })?
                .collect()
        };
        self.check_resolved(&addresses)?;
        Ok(addresses)
    }

    fn check_scheme(&self, scheme: &str) -> Result<(), SsrfError> {
        match scheme {
            "https" => Ok(()),
            "http" if self.allow_http => Ok(()),
            _ => Err(SsrfError::SchemeNotAllowed {
                allowed: if self.allow_http {
                    "https or http"
                } else {
                    "https"
                },
            }),
        }
    }

    /// Matches a host (domain or IP text, without brackets) against `allowed_hosts`.
    fn check_host_name(&self, host: &str) -> Result<(), SsrfError> {
        match &self.allowed_hosts {
            Some(globs) if !globs.is_match(host) => Err(SsrfError::HostNotAllowed),
            _ => Ok(()),
        }
    }
}

/// Whether `ip` is a public unicast address, reachable on the internet.
///
/// Refused: loopback, private, link-local, CGNAT, multicast, unspecified, broadcast,
/// documentation, benchmarking and reserved IPv4 ranges; IPv6 outside `2000::/3` (ULA
/// incl. `fd00:ec2::254`, link-local, site-local, multicast, discard, `::/8`), Teredo and the
/// rest of `2001::/23`, `2001:db8::/32`, `3fff::/20`; IPv4-mapped, NAT64 and 6to4 addresses
/// whose embedded IPv4 is not public.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

/// IPv4 ranges that are never public (RFC 6890 and successors).
const FORBIDDEN_V4: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT shared address space
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// Ranges inside global unicast `2000::/3` that are never public.
const FORBIDDEN_V6_GLOBAL: [(Ipv6Addr, u8); 3] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF assignments: Teredo, benchmarking, ORCHID
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
];

/// `2000::/3`: the only IPv6 block that holds public unicast addresses.
const GLOBAL_UNICAST: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// NAT64 well-known prefix `64:ff9b::/96` (RFC 6052); the low 32 bits are an IPv4 address.
const NAT64: (Ipv6Addr, u8) = (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);

/// 6to4 `2002::/16` (RFC 3056); bits 16..48 are an IPv4 address.
const SIX_TO_FOUR: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);

fn in_v4(ip: Ipv4Addr, (network, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    ip.to_bits() & mask == network.to_bits() & mask
}

fn in_v6(ip: Ipv6Addr, (network, prefix): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    ip.to_bits() & mask == network.to_bits() & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !FORBIDDEN_V4.iter().any(|&range| in_v4(ip, range))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let bits = ip.to_bits();
    if in_v6(ip, NAT64) {
        // Truncation keeps exactly the embedded IPv4 address.
        return is_public_v4(Ipv4Addr::from_bits(bits as u32));
    }
    if !in_v6(ip, GLOBAL_UNICAST) {
        return false;
    }
    if in_v6(ip, SIX_TO_FOUR) && !is_public_v4(Ipv4Addr::from_bits((bits >> 80) as u32)) {
        return false;
    }
    !FORBIDDEN_V6_GLOBAL.iter().any(|&range| in_v6(ip, range))
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
        let bare = host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(host);
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

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn public_addresses_are_public() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(is_public(ip(text)), "{text} should be public");
            assert_eq!(strict().check_ip(ip(text)), Ok(()), "{text}");
        }
    }

    #[test]
    fn non_public_addresses_are_refused() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private 10/8"),
            ("10.255.255.255", "private 10/8 top"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT top"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback top"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.0.1", "link-local"),
            ("172.16.0.1", "private 172.16/12"),
            ("172.31.255.255", "private 172.16/12 top"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "TEST-NET-1"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private 192.168/16"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking top"),
            ("198.51.100.7", "TEST-NET-2"),
            ("203.0.113.9", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast SSDP"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "IPv6 unspecified"),
            ("::1", "IPv6 loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("::ffff:10.0.0.1", "IPv4-mapped private"),
            ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
            ("::127.0.0.1", "IPv4-compatible loopback"),
            ("::8.8.8.8", "IPv4-compatible (deprecated)"),
            ("::ffff:0:8.8.8.8", "IPv4-translated"),
            ("64:ff9b::7f00:1", "NAT64 of loopback"),
            ("64:ff9b::a9fe:a9fe", "NAT64 of metadata"),
            ("64:ff9b:1::1", "NAT64 local-use"),
            ("2002:7f00:0001::1", "6to4 of loopback"),
            ("2002:c0a8:0101::1", "6to4 of 192.168.1.1"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo address"),
            ("2001:2::1", "IPv6 benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("2001:db8::1", "IPv6 documentation"),
            ("3fff::1", "IPv6 documentation RFC 9637"),
            ("fc00::1", "ULA fc00::/7"),
            ("fd12:3456::1", "ULA fd"),
            ("fd00:ec2::254", "AWS IPv6 metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local top"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("100::1", "discard-only"),
            ("5f00::1", "SRv6 SIDs"),
            ("4000::1", "outside 2000::/3"),
        ];
        for (text, description) in cases {
            assert!(
                !is_public(ip(text)),
                "{text} ({description}) must not be public"
            );
            assert_eq!(
                strict().check_ip(ip(text)),
                Err(SsrfError::ForbiddenAddress { address: ip(text) }),
                "{text} ({description})"
            );
        }
    }

    #[test]
    fn allowed_networks_let_listed_private_addresses_through() {
        let policy = OutboundPolicy::new(
            false,
            &[],
            &["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
        )
        .unwrap();
        assert_eq!(policy.check_ip(ip("10.1.2.3")), Ok(()));
        assert_eq!(
            policy.check_ip(ip("::ffff:10.1.2.3")),
            Ok(()),
            "mapped form"
        );
        assert_eq!(policy.check_ip(ip("fd00:ec2::254")), Ok(()));
        assert!(policy.check_ip(ip("10.2.0.1")).is_err());
        assert!(policy.check_ip(ip("127.0.0.1")).is_err());
        assert!(policy.check_ip(ip("fc00::1")).is_err());
    }

    #[test]
    fn a_resolved_set_is_refused_if_any_address_is_forbidden() {
        let policy = strict();
        let public: SocketAddr = "1.1.1.1:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(policy.check_resolved(&[public]), Ok(()));
        assert_eq!(
            policy.check_resolved(&[public, private]),
            Err(SsrfError::ForbiddenAddress {
                address: private.ip()
            })
        );
        assert_eq!(policy.check_resolved(&[]), Err(SsrfError::Unresolvable));
    }

    #[test]
    fn check_url_accepts_public_https_urls() {
        let policy = strict();
        for raw in [
            "https://api.openalgo.in",
            "https://broker.example.com:8443/base/path?x=1",
            "https://1.1.1.1/",
            "https://[2606:4700::1111]/",
            "https://EXAMPLE.com/",
        ] {
            let url = policy.check_url(raw);
            assert!(url.is_ok(), "{raw}: {url:?}");
        }
        assert_eq!(
            policy.check_url("https://EXAMPLE.com/").unwrap().host_str(),
            Some("example.com")
        );
    }

    #[test]
    fn check_url_refuses_what_the_rules_forbid() {
        let policy = strict();
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let loopback = SsrfError::ForbiddenAddress {
            address: ip("127.0.0.1"),
        };
        let https_only = SsrfError::SchemeNotAllowed { allowed: "https" };
        let cases: Vec<(&str, SsrfError, &str)> = vec![
            (
                "http://example.com/",
                https_only.clone(),
                "http without allow_http",
            ),
            ("ftp://example.com/", https_only.clone(), "ftp"),
            ("file:///etc/passwd", https_only.clone(), "file"),
            ("gopher://example.com/", https_only.clone(), "gopher"),
            ("javascript:alert(1)", https_only.clone(), "javascript"),
            (
                "https://user@example.com/",
                SsrfError::Credentials,
                "user name",
            ),
            (
                "https://user:pw@example.com/",
                SsrfError::Credentials,
                "user and password",
            ),
            (
                "https://:pw@example.com/",
                SsrfError::Credentials,
                "password only",
            ),
            ("https://example.com/#frag", SsrfError::Fragment, "fragment"),
            (
                "https://example.com/#",
                SsrfError::Fragment,
                "empty fragment",
            ),
            ("not a url", SsrfError::InvalidUrl, "not a URL"),
            ("https://", SsrfError::InvalidUrl, "no host"),
            ("example.com", SsrfError::InvalidUrl, "no scheme"),
            (
                " https://example.com/",
                SsrfError::InvalidUrl,
                "leading space",
            ),
            (
                "https://exa\tmple.com/",
                SsrfError::InvalidUrl,
                "tab inside",
            ),
            ("https://example.com/\n", SsrfError::InvalidUrl, "newline"),
            ("https://1.2.3.4.5/", SsrfError::InvalidUrl, "bad IPv4"),
            (long.as_str(), SsrfError::TooLong, "too long"),
            ("https://127.0.0.1/", loopback.clone(), "loopback"),
            ("https://127.1/", loopback.clone(), "short IPv4"),
            ("https://2130706433/", loopback.clone(), "decimal IPv4"),
            ("https://0x7f000001/", loopback.clone(), "hex IPv4"),
            ("https://0x7f.0.0.1/", loopback.clone(), "hex first octet"),
            ("https://0177.0.0.1/", loopback.clone(), "octal IPv4"),
            ("https://0177.1/", loopback.clone(), "short octal IPv4"),
            (
                "https://%31%32%37.0.0.1/",
                loopback.clone(),
                "percent-encoded IPv4",
            ),
            ("https://127.0.0.1.:443/", loopback.clone(), "trailing dot"),
            (
                "https://169.254.169.254/latest/meta-data/",
                SsrfError::ForbiddenAddress {
                    address: ip("169.254.169.254"),
                },
                "cloud metadata",
            ),
            (
                "https://0.0.0.0/",
                SsrfError::ForbiddenAddress {
                    address: ip("0.0.0.0"),
                },
                "unspecified",
            ),
            (
                "https://[::1]/",
                SsrfError::ForbiddenAddress { address: ip("::1") },
                "IPv6 loopback",
            ),
            (
                "https://[::ffff:7f00:1]/",
                SsrfError::ForbiddenAddress {
                    address: ip("::ffff:127.0.0.1"),
                },
                "IPv4-mapped loopback",
            ),
            (
                "https://[fd00:ec2::254]/",
                SsrfError::ForbiddenAddress {
                    address: ip("fd00:ec2::254"),
                },
                "AWS IPv6 metadata",
            ),
            (
                "https://10.0.0.1:8080/api",
                SsrfError::ForbiddenAddress {
                    address: ip("10.0.0.1"),
                },
                "private",
            ),
        ];
        for (raw, expected, description) in cases {
            assert_eq!(
                policy.check_url(raw),
                Err(expected),
                "{description}: {raw:?}"
            );
        }
    }

    #[test]
    fn http_is_accepted_only_with_allow_http() {
        let policy = OutboundPolicy::new(true, &[], &[]).unwrap();
        assert!(policy.check_url("http://example.com/").is_ok());
        assert!(policy.check_url("https://example.com/").is_ok());
        assert_eq!(
            policy.check_url("ftp://example.com/"),
            Err(SsrfError::SchemeNotAllowed {
                allowed: "https or http"
            })
        );
        assert_eq!(
            policy.check_url("http://127.0.0.1/"),
            Err(SsrfError::ForbiddenAddress {
                address: ip("127.0.0.1")
            }),
            "allow_http does not open private addresses"
        );
    }

    #[test]
    fn allowed_hosts_globs_match_case_insensitively_and_refuse_the_rest() {
        let policy = OutboundPolicy::new(
            false,
            &["*.openalgo.in".into(), "Broker.Example.COM".into()],
            &[],
        )
        .unwrap();
        for raw in [
            "https://api.openalgo.in/",
            "https://API.OpenAlgo.IN/x",
            "https://a.b.openalgo.in/",
            "https://broker.example.com/",
        ] {
            assert!(policy.check_url(raw).is_ok(), "{raw}");
        }
        for raw in [
            "https://openalgo.in/",
            "https://openalgo.in.evil.com/",
            "https://evilopenalgo.in/",
            "https://example.com/",
            "https://1.1.1.1/",
        ] {
            assert_eq!(
                policy.check_url(raw),
                Err(SsrfError::HostNotAllowed),
                "{raw}"
            );
        }
    }

    #[test]
    fn allowed_networks_open_literal_private_hosts() {
        let policy = OutboundPolicy::new(true, &[], &["127.0.0.0/8".parse().unwrap()]).unwrap();
        assert!(policy.check_url("http://127.0.0.1:5000/").is_ok());
        assert!(policy.check_url("http://127.1:5000/").is_ok());
        assert!(policy.check_url("http://10.0.0.1/").is_err());
    }

    #[test]
    fn invalid_host_globs_are_refused_with_their_position() {
        let error =
            OutboundPolicy::new(false, &["ok.example.com".into(), "[".into()], &[]).unwrap_err();
        assert!(error.contains("allowed_hosts[1]"), "{error}");
        let error = OutboundPolicy::new(false, &["  ".into()], &[]).unwrap_err();
        assert!(error.contains("allowed_hosts[0] is empty"), "{error}");
    }

    #[test]
    fn refusal_messages_do_not_show_resolved_addresses() {
        let error = SsrfError::ForbiddenAddress {
            address: ip("10.9.8.7"),
        };
        assert!(!error.to_string().contains("10.9.8.7"));
        let error = OutboundError::from(error);
        assert!(!error.to_string().contains("10.9.8.7"));
    }

    #[test]
    fn a_private_address_and_an_unknown_name_are_refused_with_one_message() {
        let private = SsrfError::ForbiddenAddress {
            address: ip("10.0.0.1"),
        };
        assert_eq!(private.to_string(), SsrfError::Unresolvable.to_string());
        assert_eq!(
            OutboundError::from(private).to_string(),
            OutboundError::from(SsrfError::Unresolvable).to_string()
        );
    }

    #[tokio::test]
    async fn resolve_checks_literal_addresses_without_dns() {
        let policy = strict();
        assert_eq!(
            policy.resolve("[::1]", 443).await,
            Err(SsrfError::ForbiddenAddress { address: ip("::1") })
        );
        assert_eq!(
            policy.resolve("1.1.1.1", 443).await,
            Ok(vec!["1.1.1.1:443".parse().unwrap()])
        );
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
