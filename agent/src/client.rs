//! Who the client is: the peer, or the address a trusted proxy says it forwarded for.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address. Behind trusted proxies, X-Forwarded-For is read from the right (the hop the nearest
/// proxy saw) past every trusted hop; the first untrusted hop is the client. A hop that does not parse stops the
/// walk there, at the last hop known to be trusted, so a forged entry can never be reached by hiding it behind
/// garbage. Hops are `ip`, `ip:port`, `[v6]` or `[v6]:port`; IPv4-mapped IPv6 is read as IPv4 everywhere.
pub fn client_ip(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let values: Vec<&str> = headers.get_all(X_FORWARDED_FOR).iter().map(|v| v.to_str().unwrap_or("")).collect();
    for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_hop(hop.trim()) else { return client };
        client = ip;
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = hop.parse::<SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hops_with_ports_and_brackets_are_read() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = ip("10.0.0.1");
        assert_eq!(client_ip(&trusted, peer, &xff(&["198.51.100.7, 203.0.113.9:4711"])), ip("203.0.113.9"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["[2001:db8::2]"])), ip("2001:db8::2"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["203.0.113.9, 10.1.1.1"])), ip("203.0.113.9"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["1.1.1.1", "203.0.113.9, 10.1.1.1"])), ip("203.0.113.9"));
    }

    /// The attacker writes the left of the header; a hop that does not parse must not let the walk reach it.
    #[test]
    fn a_hop_that_does_not_parse_stops_the_walk() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = ip("10.0.0.1");
        assert_eq!(client_ip(&trusted, peer, &xff(&["198.51.100.7, unknown"])), peer);
        assert_eq!(client_ip(&trusted, peer, &xff(&["198.51.100.7, unknown, 10.2.2.2"])), ip("10.2.2.2"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["198.51.100.7, "])), peer);
    }

    #[test]
    fn untrusted_peers_and_mapped_addresses() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(&trusted, ip("203.0.113.5"), &xff(&["1.2.3.4"])), ip("203.0.113.5"));
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: they match IPv4 ranges.
        assert_eq!(client_ip(&trusted, ip("::ffff:10.0.0.1"), &xff(&["203.0.113.9"])), ip("203.0.113.9"));
        assert_eq!(client_ip(&trusted, ip("::ffff:203.0.113.5"), &xff(&["1.2.3.4"])), ip("203.0.113.5"));
        assert_eq!(client_ip(&trusted, ip("10.0.0.1"), &xff(&["::ffff:203.0.113.9"])), ip("203.0.113.9"));
    }
}
