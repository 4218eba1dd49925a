//! The client's IP address, which lockouts, rate limits and the audit log key on.
//!
//! It is the socket peer, unless the peer is one of `server.trusted_proxies`; then it is
//! the right-most `X-Forwarded-For` entry that is not itself a trusted proxy. A client
//! can prepend whatever it likes to that header, so the entries left of the first
//! untrusted one are never believed.
//!
//! A hop that does not parse as an address (`unknown`, an obfuscated token, a port alone,
//! an empty element, bytes that are not visible ASCII) is untrusted and stops the walk:
//! the request comes from [`UNKNOWN`], never from the proxy, which would otherwise lend
//! the client its own standing (`/metrics`, its rate budget, its lockout count).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::HeaderMap;
use ipnet::{IpNet, Ipv6Net};

/// The client behind a trusted proxy whose `X-Forwarded-For` cannot be read. `0.0.0.0`
/// is never a socket peer, so every such request shares this one rate budget and lockout
/// count, and no real client does; [`ClientIp::known`] keeps it out of every network check
/// (`metrics.allowed_networks`, `trusted_proxies`), even `0.0.0.0/0`. Audit rows and logs
/// show it as `0.0.0.0`.
pub const UNKNOWN: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The trusted client IP of a request, stored in its extensions by the first layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The address, unless the client is [`UNKNOWN`]: what network allowlists test.
    pub fn known(self) -> Option<IpAddr> {
        (self.0 != UNKNOWN).then_some(self.0)
    }
}

/// An address written out as text without the formatting machinery, on the stack: the
/// per-request paths (limiter keys, the backend's forwarding headers) write one or more
/// for every request, and `Display` for an IPv4 address costs more than all the rest of
/// those headers together.
#[derive(Clone, Copy)]
pub struct IpText {
    bytes: [u8; 45],
    len: u8,
}

impl IpText {
    /// The text of `address`, as `Display` writes it.
    pub fn new(address: IpAddr) -> Self {
        let mut text = Self {
            bytes: [0; 45],
            len: 0,
        };
        match address {
            IpAddr::V4(v4) => {
                for (index, octet) in v4.octets().into_iter().enumerate() {
                    if index > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut cursor = std::io::Cursor::new(&mut text.bytes[..]);
                // std writes at most 39 bytes; 45 is the longest form any writer uses.
                let _ = write!(cursor, "{v6}");
                text.len = u8::try_from(cursor.position()).unwrap_or(0);
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.bytes[usize::from(self.len)] = byte;
        self.len += 1;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, hex digits, `.` and `:` are ever written.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::ops::Deref for IpText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Determines the client IP from the socket peer and, behind trusted proxies,
/// `X-Forwarded-For`.
pub fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer.ip());
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    // Walk every X-Forwarded-For line and entry from the right: the nearest hop first.
    // The bytes are split before any text check, so one bad entry cannot hide the others.
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        for entry in value.as_bytes().rsplit(|b| *b == b',') {
            let Some(address) = parse_entry(entry) else {
                return UNKNOWN;
            };
            if !is_trusted(address, trusted) {
                return address;
            }
            client = address;
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
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Net::new_assert(v6, ipv6_prefix.min(128)).network()),
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

/// One `X-Forwarded-For` entry as an address; `None` for anything else, including the
/// unspecified addresses, which no client has.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
    if !entry.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let address = match entry.parse::<IpAddr>() {
        Ok(address) => address,
        // "1.2.3.4:5678" or "[::1]:5678"
        Err(_) => entry.parse::<SocketAddr>().ok()?.ip(),
    };
    Some(canonical(address)).filter(|address| !address.is_unspecified())
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
    fn address_text_is_what_display_writes() {
        for address in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "203.0.113.9",
            "10.0.0.1",
            "::",
            "::1",
            "2001:db8::ffff:1:2:3",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "0:0:0:0:0:ffff:198.51.100.7",
            "fe80::1",
        ] {
            let address: IpAddr = address.parse().unwrap();
            assert_eq!(IpText::new(address).as_str(), address.to_string());
        }
        for octets in [[0, 0, 0, 0], [1, 20, 199, 250], [100, 101, 9, 10]] {
            let address = IpAddr::from(octets);
            assert_eq!(&*IpText::new(address), address.to_string());
        }
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

    /// One header line per `\n`.
    fn raw_headers(lines: &[u8]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in lines.split(|b| *b == b'\n') {
            map.append(
                "x-forwarded-for",
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn an_unreadable_hop_makes_the_client_unknown_never_the_proxy() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let cases: &[&[u8]] = &[
            b"1.1.1.1, nonsense",
            b"8.8.8.8, \xff",
            b"\xff8.8.8.8",
            b"8.8.8.8,",
            b"8.8.8.8,,10.0.0.1",
            b",",
            b"",
            b" ",
            b"unknown",
            b"_hidden",
            b"for=8.8.8.8",
            b":8080",
            b"8.8.8.8:",
            b"0.0.0.0",
            b"::",
            b"fe80::1%eth0",
            b"010.8.8.8",
            b"8.8.8.8\ngarbage",
            b"8.8.8.8\n10.0.0.3, \xff",
        ];
        for values in cases {
            let ip = resolve(peer("10.0.0.2"), &raw_headers(values), &trusted);
            assert_eq!(ip, UNKNOWN, "{}", String::from_utf8_lossy(values));
            assert_eq!(ClientIp(ip).known(), None);
        }
    }

    #[test]
    fn entries_left_of_the_client_are_never_read() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let cases: &[&[u8]] = &[
            b"\xff, 8.8.8.8",
            b"garbage, 8.8.8.8, 10.0.0.3",
            b"garbage\n8.8.8.8",
            b"\t8.8.8.8 ",
            b"8.8.8.8:443",
        ];
        for values in cases {
            let ip = resolve(peer("10.0.0.2"), &raw_headers(values), &trusted);
            assert_eq!(
                ip.to_string(),
                "8.8.8.8",
                "{}",
                String::from_utf8_lossy(values)
            );
        }
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
