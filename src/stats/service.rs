//! Services: which calls are contacts of which service (`[[service]]` in the configuration).
//!
//! A call is classified **before pseudonymisation**, on the clear called number, in the
//! process that made the record (the daemon's spool writer, `teledge report` on captures):
//! configured numbers are never hashed, patterns (prefixes) work, and no site key is needed
//! to classify. The consequence: the collector's call records, pseudonymised, cannot be
//! classified again; a collector's output is reported from its interval records, which carry
//! the service.
//!
//! Rules, per `[[service]]` in file order, the first that matches wins:
//! - `numbers`: the called number (the To user of the first INVITE) equals an entry, or
//!   starts with an entry's text before a final `*`; empty: any number;
//! - `trunks`: addresses or CIDR blocks of trunks or PBXs; with `direction = "inbound"` (the
//!   default when trunks are given) the INVITE came *from* one of them, `"outbound"` it went
//!   *to* one, `"any"` either; without trunks the direction cannot be told and is not checked.
//!
//! Calls no service matches are not contacts (counted, see [`crate::stats::Aggregator`]).
//! Without any `[[service]]`, every call is a contact of the service `default`.

use std::net::{IpAddr, SocketAddr};

use crate::record::CallRecord;

/// Which way a service's calls go, told by its trunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
    Any,
}

/// An address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    /// `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`.
    pub fn parse(text: &str) -> Result<Net, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A called-number pattern: exact, or a prefix (`0800*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberPattern {
    Exact(String),
    Prefix(String),
}

impl NumberPattern {
    pub fn parse(text: &str) -> NumberPattern {
        match text.strip_suffix('*') {
            Some(prefix) => NumberPattern::Prefix(prefix.to_owned()),
            None => NumberPattern::Exact(text.to_owned()),
        }
    }

    fn matches(&self, number: &str) -> bool {
        match self {
            NumberPattern::Exact(n) => n == number,
            NumberPattern::Prefix(p) => number.starts_with(p.as_str()),
        }
    }
}

/// One service, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    pub name: String,
    pub numbers: Vec<NumberPattern>,
    pub trunks: Vec<Net>,
    pub direction: Direction,
    /// Abandons with a wait shorter than this are short abandons (seconds).
    pub short_abandon_s: u32,
    /// The service-level threshold T (seconds).
    pub sl_threshold_s: u32,
    /// The service-level target (percent), shown beside the service levels.
    pub sl_target_percent: u32,
    /// May supervisors listen to this service's calls live (`crate::access`; statistics do
    /// not use it).
    pub monitorable: bool,
}

impl ServiceSettings {
    /// The service every call belongs to when none is configured.
    pub fn default_service() -> ServiceSettings {
        ServiceSettings {
            name: "default".into(),
            numbers: Vec::new(),
            trunks: Vec::new(),
            direction: Direction::Any,
            short_abandon_s: 5,
            sl_threshold_s: 20,
            sl_target_percent: 80,
            monitorable: false,
        }
    }

    fn matches(&self, call: &CallRecord) -> bool {
        self.matches_parts(
            call.callee.user.as_deref(),
            &call.caller_address,
            &call.callee_address,
        )
    }

    /// [`Self::matches`] on the parts it reads: the called user, the signalling addresses.
    fn matches_parts(&self, callee_user: Option<&str>, caller: &str, callee: &str) -> bool {
        let number_ok = self.numbers.is_empty()
            || callee_user.is_some_and(|n| self.numbers.iter().any(|p| p.matches(n)));
        if !number_ok {
            return false;
        }
        if self.trunks.is_empty() {
            return true;
        }
        let on_trunk = |address: &str| {
            address
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| address.parse::<IpAddr>())
                .is_ok_and(|ip| self.trunks.iter().any(|n| n.contains(ip)))
        };
        match self.direction {
            Direction::Inbound => on_trunk(caller),
            Direction::Outbound => on_trunk(callee),
            Direction::Any => on_trunk(caller) || on_trunk(callee),
        }
    }
}

/// The configured services, in file order (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services(Vec<ServiceSettings>);

impl Default for Services {
    fn default() -> Self {
        Services(vec![ServiceSettings::default_service()])
    }
}

impl Services {
    /// The services given, or the one `default` service when none is.
    pub fn new(services: Vec<ServiceSettings>) -> Services {
        if services.is_empty() {
            Services::default()
        } else {
            Services(services)
        }
    }

    /// The index of the first service the call belongs to (clear numbers: classify before
    /// pseudonymisation).
    pub fn classify(&self, call: &CallRecord) -> Option<usize> {
        self.0.iter().position(|s| s.matches(call))
    }

    /// [`Self::classify`] of a call still open (the live status view): by its called user
    /// (clear) and signalling addresses (`ip:port`).
    pub fn classify_parts(
        &self,
        callee_user: Option<&str>,
        caller_address: &str,
        callee_address: &str,
    ) -> Option<usize> {
        self.0
            .iter()
            .position(|s| s.matches_parts(callee_user, caller_address, callee_address))
    }

    /// The service of a call still open (live listen decides by it before any record
    /// exists): [`Self::classify_parts`], the service itself.
    pub fn classify_open(
        &self,
        callee_user: Option<&str>,
        caller_address: &str,
        callee_address: &str,
    ) -> Option<&ServiceSettings> {
        self.classify_parts(callee_user, caller_address, callee_address)
            .and_then(|i| self.0.get(i))
    }

    /// The index of a service by name (queue facts name their queue).
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|s| s.name == name)
    }

    pub fn get(&self, index: usize) -> Option<&ServiceSettings> {
        self.0.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ServiceSettings> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let net = Net::parse("192.0.2.0/24").unwrap();
        assert!(net.contains("192.0.2.77".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        let six = Net::parse("2001:db8::/32").unwrap();
        assert!(six.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!six.contains("2001:db9::5".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("x").is_err());
    }

    #[test]
    fn number_patterns_are_exact_or_prefixes() {
        assert!(NumberPattern::parse("0800*").matches("08001234"));
        assert!(!NumberPattern::parse("0800*").matches("0900"));
        assert!(NumberPattern::parse("100").matches("100"));
        assert!(!NumberPattern::parse("100").matches("1000"));
    }
}
