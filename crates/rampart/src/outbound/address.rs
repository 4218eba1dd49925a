//! What an outbound address may be: public unicast only, unless a network in
//! `accounts.allowed_networks` lets it through; and the checks on every address a host
//! resolves to.
//!
//! Ranges are [`ipnet`] networks, checked when compiled. The one hand-written bit
//! arithmetic left reads the IPv4 address carried inside a NAT64 or 6to4 address, which
//! ipnet has no accessor for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use url::Url;

use super::{OutboundPolicy, SsrfError, bare_host};

impl OutboundPolicy {
    /// [`OutboundPolicy::check_url`], then resolves the host and checks every address, for a
    /// 400 when an account is saved. [`SafeClient`](super::SafeClient) checks again when it connects.
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
        let bare = bare_host(host);
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

/// `a.b.c.d/len`, checked when compiled.
const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

/// `first::/len` (or `first:second::/len`), checked when compiled.
const fn v6(first: u16, second: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(first, second, 0, 0, 0, 0, 0, 0), len)
}

/// IPv4 ranges that are never public (RFC 6890 and successors).
const FORBIDDEN_V4: [Ipv4Net; 15] = [
    v4(0, 0, 0, 0, 8),       // "this network", unspecified
    v4(10, 0, 0, 0, 8),      // private
    v4(100, 64, 0, 0, 10),   // CGNAT shared address space
    v4(127, 0, 0, 0, 8),     // loopback
    v4(169, 254, 0, 0, 16),  // link-local, cloud metadata
    v4(172, 16, 0, 0, 12),   // private
    v4(192, 0, 0, 0, 24),    // IETF protocol assignments
    v4(192, 0, 2, 0, 24),    // TEST-NET-1
    v4(192, 88, 99, 0, 24),  // deprecated 6to4 relay anycast
    v4(192, 168, 0, 0, 16),  // private
    v4(198, 18, 0, 0, 15),   // benchmarking
    v4(198, 51, 100, 0, 24), // TEST-NET-2
    v4(203, 0, 113, 0, 24),  // TEST-NET-3
    v4(224, 0, 0, 0, 4),     // multicast
    v4(240, 0, 0, 0, 4),     // reserved, broadcast
];

/// Ranges inside global unicast `2000::/3` that are never public.
const FORBIDDEN_V6_GLOBAL: [Ipv6Net; 3] = [
    v6(0x2001, 0, 23),     // IETF assignments: Teredo, benchmarking, ORCHID
    v6(0x2001, 0xdb8, 32), // documentation
    v6(0x3fff, 0, 20),     // documentation (RFC 9637)
];

/// `2000::/3`: the only IPv6 block that holds public unicast addresses.
const GLOBAL_UNICAST: Ipv6Net = v6(0x2000, 0, 3);

/// NAT64 well-known prefix `64:ff9b::/96` (RFC 6052); the low 32 bits are an IPv4 address.
const NAT64: Ipv6Net = v6(0x64, 0xff9b, 96);

/// 6to4 `2002::/16` (RFC 3056); bits 16..48 are an IPv4 address.
const SIX_TO_FOUR: Ipv6Net = v6(0x2002, 0, 16);

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !FORBIDDEN_V4.iter().any(|range| range.contains(&ip))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // The IPv4 address inside a NAT64 or 6to4 address is read by shifting: ipnet tests
    // membership but does not extract embedded addresses.
    let bits = ip.to_bits();
    if NAT64.contains(&ip) {
        // Truncation keeps exactly the low 32 bits.
        return is_public_v4(Ipv4Addr::from_bits(bits as u32));
    }
    if !GLOBAL_UNICAST.contains(&ip) {
        return false;
    }
    if SIX_TO_FOUR.contains(&ip) && !is_public_v4(Ipv4Addr::from_bits((bits >> 80) as u32)) {
        return false;
    }
    !FORBIDDEN_V6_GLOBAL.iter().any(|range| range.contains(&ip))
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
}
