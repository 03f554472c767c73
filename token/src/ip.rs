//! Client address ranges (spec §3.3).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range a token is bound to, always held in canonical form (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    len: u8,
}

/// Why an address or range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpRangeError {
    #[error("not an IP address or CIDR range")]
    Syntax,
    #[error("the prefix length is too large for this address family")]
    Length,
    #[error("IPv4-mapped IPv6 addresses are not allowed; write the IPv4 address")]
    Mapped,
    #[error("not in canonical form (expected {0})")]
    NotCanonical(String),
}

impl IpRange {
    /// Parses what a person gives a signer: a bare address or a CIDR, host bits allowed and cleared.
    pub fn parse_lenient(input: &str) -> Result<Self, IpRangeError> {
        let (addr, len) = match input.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| IpRangeError::Syntax)?)),
            None => (input, None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| IpRangeError::Syntax)?;
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(IpRangeError::Mapped);
        }
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(IpRangeError::Length);
        }
        Ok(IpRange { addr: mask(addr, len), len })
    }

    /// Parses a claim, which must already be canonical: anything else is a malformed token.
    pub fn parse_canonical(claim: &str) -> Result<Self, IpRangeError> {
        if !claim.contains('/') {
            return Err(IpRangeError::Syntax);
        }
        let range = Self::parse_lenient(claim)?;
        // Compare without allocating: write the canonical form into a small stack buffer.
        let mut buf = StackStr::<64>::new();
        fmt::write(&mut buf, format_args!("{range}")).map_err(|_| IpRangeError::Syntax)?;
        if buf.as_str() != claim {
            return Err(IpRangeError::NotCanonical(range.to_string()));
        }
        Ok(range)
    }

    /// Whether a client address is inside the range; an IPv4-mapped IPv6 client counts as IPv4.
    pub fn contains(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, client) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(client, self.len) == self.addr,
            _ => false,
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // std's Ipv6Addr display follows RFC 5952; mapped addresses, its one special form, are refused above.
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// A fixed-capacity string for formatting small values on the stack.
struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    fn new() -> Self {
        StackStr { buf: [0; N], len: 0 }
    }
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever written, so the bytes are valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).filter(|&e| e <= N).ok_or(fmt::Error)?;
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
