//! Outbound calls to users' broker hosts, and the policy that says where they may go.
//!
//! [`OutboundPolicy::check_url`] vets a `host_url` when an account is saved (400 on refusal);
//! [`SafeClient`] repeats every check when it connects: its connector resolves the host
//! itself, refuses if any address is not public, and dials exactly the checked address, so
//! DNS rebinding cannot slip past. Redirects are never followed and responses are capped.
//! Refusals are [`SsrfError`], transport failures [`OutboundError`]; their `Display` shows no
//! address beyond what the user typed.
//!
//! This module holds the URL rules (scheme, credentials, fragment, host globs);
//! `address` what an address may be and the checks on a resolved host, `client` the
//! HTTP client that pins each connection to a checked address.

mod address;
mod client;

pub use address::is_public;
pub use client::{
    ConnectError, DEFAULT_MAX_RESPONSE_BYTES, OutboundError, SafeClient, SafeConnector,
};

use std::net::IpAddr;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use url::{Host, Url};

/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

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

/// `host` without the brackets of an IPv6 literal (`[::1]` is `::1`).
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host)
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
}
