//! The client's IP address, which lockouts, rate limits and the audit log key on.
//!
//! It is the socket peer, unless the peer is one of `server.trusted_proxies`; then it is
//! the right-most `X-Forwarded-For` entry that is not itself a trusted proxy. A client
//! can prepend whatever it likes to that header, so the entries left of the first
//! untrusted one are never believed.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The trusted client IP of a request, stored in its extensions by the first layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Determines the client IP from the socket peer and, behind trusted proxies,
/// `X-Forwarded-For`.
pub fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer.ip());
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    // Walk every X-Forwarded-For value from the right: the nearest hop first.
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|value| value.rsplit(',')) {
        let Some(address) = parse_entry(entry.trim()) else {
            // A malformed hop cannot be attributed; stop at the last good one.
            return client;
        };
        client = address;
        if !is_trusted(address, trusted) {
            return address;
        }
    }
    client
}

/// The address that rate limits and lockouts count against: an IPv4 address itself, an
/// IPv6 address cut to its first `ipv6_prefix` bits (a host that owns a /64 can rotate
/// through it freely, so counting per /128 would never limit it).
pub fn bucket(address: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let prefix = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn is_trusted(address: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|network| network.contains(&address))
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    // "1.2.3.4:5678" or "[::1]:5678"
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|socket| canonical(socket.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_ip() {
        let ip = resolve(peer("203.0.113.9"), &headers(&["1.1.1.1"]), &[]);
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_entry_wins() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        // The client sent "6.6.6.6" itself; the proxy appended the real address.
        let ip = resolve(
            peer("10.0.0.2"),
            &headers(&["6.6.6.6, 198.51.100.7, 10.0.0.1"]),
            &trusted,
        );
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn several_header_lines_are_read_as_one_list() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = resolve(
            peer("10.0.0.2"),
            &headers(&["6.6.6.6", "198.51.100.7"]),
            &trusted,
        );
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = resolve(peer("10.0.0.2"), &HeaderMap::new(), &trusted);
        assert_eq!(ip.to_string(), "10.0.0.2");
    }

    #[test]
    fn garbage_entries_stop_the_walk() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = resolve(peer("10.0.0.2"), &headers(&["1.1.1.1, nonsense"]), &trusted);
        assert_eq!(ip.to_string(), "10.0.0.2");
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(a, 64), bucket(b, 64));
        assert_eq!(bucket(a, 64).to_string(), "2001:db8:1:2::");
        assert_ne!(bucket(a, 64), bucket(other, 64));
        assert_ne!(bucket(a, 128), bucket(b, 128));
        assert_eq!(bucket(a, 128), a);
        assert_eq!(bucket(other, 48), bucket(a, 48));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(bucket(v4, 64), v4);
    }

    #[test]
    fn mapped_ipv6_peers_are_their_ipv4_address() {
        let ip = resolve(peer("::ffff:192.0.2.1"), &HeaderMap::new(), &[]);
        assert_eq!(ip.to_string(), "192.0.2.1");
    }
}
