//! [`Cidr`]: a block of addresses (`10.0.0.0/8`, `2001:db8::/32`), as the
//! `admin_allow` setting lists them.

use std::net::IpAddr;

/// One CIDR block (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address[/prefix]`; host bits must be zero, so a typo such as
    /// `10.0.0.1/8` is caught rather than read as `10.0.0.0/8`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {bits}")),
            },
        };
        let cidr = Self { network, prefix };
        if masked(network, prefix) != network {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{prefix}?)",
                masked(network, prefix)
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && masked(ip, self.prefix) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `ip` with all but its first `prefix` bits cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_parse_strictly() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let host_bits = Cidr::parse("10.0.0.1/8").unwrap_err();
        assert!(host_bits.contains("10.0.0.0/8"), "{host_bits}");
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "", "::/129", "10.0.0.0/-1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
