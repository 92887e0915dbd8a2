//! Pod networks as CIDRs, to tell east-west (peer inside the cluster) from north-south traffic.

use std::net::IpAddr;

/// A parsed CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (no /prefix)"))?;
        let network: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Cidr { network, prefix })
    }

    /// The network address and prefix length.
    pub fn parts(&self) -> (IpAddr, u8) {
        (self.network, self.prefix)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is matched against IPv4 blocks.
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

/// "east-west" when `peer` is inside one of the cluster's pod networks, else "north-south".
pub fn traffic_class(cidrs: &[Cidr], peer: IpAddr) -> &'static str {
    if cidrs.iter().any(|c| c.contains(peer)) {
        "east-west"
    } else {
        "north-south"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_peers() {
        let cidrs = vec![
            Cidr::parse("10.244.1.0/24").expect("v4"),
            Cidr::parse("fd00:10::/64").expect("v6"),
        ];
        assert_eq!(
            traffic_class(&cidrs, "10.244.1.7".parse().expect("ip")),
            "east-west"
        );
        assert_eq!(
            traffic_class(&cidrs, "10.244.2.7".parse().expect("ip")),
            "north-south"
        );
        assert_eq!(
            traffic_class(&cidrs, "fd00:10::5".parse().expect("ip")),
            "east-west"
        );
        assert_eq!(
            traffic_class(&cidrs, "::ffff:10.244.1.9".parse().expect("ip")),
            "east-west"
        );
        assert_eq!(
            traffic_class(&cidrs, "203.0.113.9".parse().expect("ip")),
            "north-south"
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains("1.2.3.4".parse().expect("ip")));
    }
}
