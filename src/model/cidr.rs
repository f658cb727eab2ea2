//! `Cidr`: an IPv4 or IPv6 network prefix whose host bits are zero.
//!
//! Contract:
//! - A `Cidr` always holds a network address with every bit past the prefix length zero and a
//!   prefix length within its family's width (0..=32 for IPv4, 0..=128 for IPv6). Constructors
//!   and `FromStr` return a typed [`CidrError`] otherwise; no input makes them panic.
//! - Text form: `ADDRESS/LEN`. A bare address (no `/LEN`) is accepted and means the host prefix
//!   (`/32` or `/128`). The length is plain decimal digits without a sign or leading zeros.
//!   `Display` always writes the canonical `ADDRESS/LEN`, so equivalent spellings print alike.
//! - A set bit past the prefix is an error, not silently masked: `10.0.0.1/8` most likely means
//!   a typo, and the error suggests the masked network (`10.0.0.0/8`).
//! - Order (`Ord`): family (IPv4 first), then address, then prefix length.
//! - Serde: serialized and deserialized as the text form. Deserialization validates inside the
//!   string visitor, so serde_norway reports a rejection at the scalar's own line and column.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Address width in bits: the longest prefix this family allows.
    pub const fn max_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a text or an (address, length) pair is not a valid network prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("empty CIDR; expected an address with a prefix length such as 10.0.0.0/8")]
    Empty,
    #[error("`{input}` is not an IPv4 or IPv6 address")]
    BadAddress { input: String },
    #[error("`{input}`: the prefix length after '/' must be decimal digits without leading zeros")]
    BadLength { input: String },
    #[error("`{input}`: prefix length exceeds {max} for {family}")]
    LengthOutOfRange { input: String, family: Family, max: u8 },
    #[error("{input} has host bits set (did you mean {network}?)")]
    HostBitsSet { input: String, network: Cidr },
}

/// An IPv4 or IPv6 network: an address whose host bits are zero, and a prefix length.
///
/// Field order matters: the derived `Ord` compares `addr` first (`IpAddr` orders IPv4 before
/// IPv6, then by address) and `len` second, which is the documented order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The network `addr/len`; rejects a length past the family's width and set host bits.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, CidrError> {
        let network = Cidr::new_truncating(addr, len)?;
        if network.addr != addr {
            return Err(CidrError::HostBitsSet { input: format!("{addr}/{len}"), network });
        }
        Ok(network)
    }

    /// The network containing `addr` with prefix length `len`: host bits are cleared.
    pub fn new_truncating(addr: IpAddr, len: u8) -> Result<Cidr, CidrError> {
        let family = Family::of(addr);
        if len > family.max_len() {
            return Err(CidrError::LengthOutOfRange {
                input: format!("{addr}/{len}"),
                family,
                max: family.max_len(),
            });
        }
        let bits = bits_of(addr) & mask(family, len);
        Ok(Cidr { addr: addr_from_bits(family, bits), len })
    }

    /// The host prefix of `addr`: `/32` for IPv4, `/128` for IPv6.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr { addr, len: Family::of(addr).max_len() }
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }

    /// The prefix length in bits.
    #[allow(clippy::len_without_is_empty)] // a prefix length, not a container size
    pub fn len(&self) -> u8 {
        self.len
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The network address as an integer; an IPv4 address sits in the low 32 bits.
    pub fn addr_bits(&self) -> u128 {
        bits_of(self.addr)
    }

    /// The netmask as an integer in the same layout as [`Cidr::addr_bits`].
    pub fn mask_bits(&self) -> u128 {
        mask(self.family(), self.len)
    }

    /// The IPv4 network address, if this is an IPv4 prefix.
    pub fn v4(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }

    /// The IPv6 network address, if this is an IPv6 prefix.
    pub fn v6(&self) -> Option<Ipv6Addr> {
        match self.addr {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }

    /// Whether `addr` lies in this network. Families never mix: an IPv4-mapped IPv6 address is
    /// not inside an IPv4 prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family() && bits_of(addr) & self.mask_bits() == self.addr_bits()
    }

    /// Whether every address of `other` lies in this network (a network contains itself).
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }
}

/// The address as an integer, IPv4 in the low 32 bits.
fn bits_of(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn addr_from_bits(family: Family, bits: u128) -> IpAddr {
    match family {
        // Only ever called with bits masked to the family's width, so the cast keeps them all.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// The netmask for `len` (at most the family's width) in the `bits_of` layout.
fn mask(family: Family, len: u8) -> u128 {
    let width = u32::from(family.max_len());
    let len = u32::from(len).min(width);
    // `checked_shl` covers len == 0, where the shift would be the full 128 bits.
    let ones = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    ones >> (128 - width)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Cidr, CidrError> {
        if input.is_empty() {
            return Err(CidrError::Empty);
        }
        let (addr_text, len_text) = match input.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (input, None),
        };
        let addr: IpAddr =
            addr_text.parse().map_err(|_| CidrError::BadAddress { input: addr_text.to_owned() })?;
        let Some(len_text) = len_text else {
            return Ok(Cidr::host(addr));
        };
        let family = Family::of(addr);
        let well_formed = !len_text.is_empty()
            && len_text.bytes().all(|b| b.is_ascii_digit())
            && (len_text == "0" || !len_text.starts_with('0'));
        if !well_formed {
            return Err(CidrError::BadLength { input: input.to_owned() });
        }
        // Digits only, so the parse fails only on overflow, which is out of range as well.
        let len = match len_text.parse::<u8>() {
            Ok(len) if len <= family.max_len() => len,
            _ => {
                return Err(CidrError::LengthOutOfRange {
                    input: input.to_owned(),
                    family,
                    max: family.max_len(),
                })
            }
        };
        Cidr::new(addr, len).map_err(|err| match err {
            CidrError::HostBitsSet { network, .. } => {
                CidrError::HostBitsSet { input: input.to_owned(), network }
            }
            other => other,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        super::de::parse_str_scalar(
            deserializer,
            "a CIDR such as 10.0.0.0/8 or 2001:db8::/32",
            str::parse::<Cidr>,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepts_and_prints_canonically() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("198.51.100.7/32", "198.51.100.7/32"),
            ("198.51.100.7", "198.51.100.7/32"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:0db8:0000::/32", "2001:db8::/32"),
            ("2001:DB8::/32", "2001:db8::/32"),
            ("::/0", "::/0"),
            ("::1", "::1/128"),
            ("fd00:dead::/32", "fd00:dead::/32"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
        ];
        for (input, expected) in cases {
            assert_eq!(cidr(input).to_string(), expected, "input {input}");
        }
    }

    #[test]
    fn rejections_name_the_problem() {
        let cases = [
            ("", "empty CIDR; expected an address with a prefix length such as 10.0.0.0/8"),
            ("10.0.0/8", "`10.0.0` is not an IPv4 or IPv6 address"),
            ("/8", "`` is not an IPv4 or IPv6 address"),
            ("010.0.0.0/8", "`010.0.0.0` is not an IPv4 or IPv6 address"),
            ("fe80::1%eth0/64", "`fe80::1%eth0` is not an IPv4 or IPv6 address"),
            (" 10.0.0.0/8", "` 10.0.0.0` is not an IPv4 or IPv6 address"),
            (
                "10.0.0.0/",
                "`10.0.0.0/`: the prefix length after '/' must be decimal digits without leading zeros",
            ),
            (
                "10.0.0.0/+8",
                "`10.0.0.0/+8`: the prefix length after '/' must be decimal digits without leading zeros",
            ),
            (
                "10.0.0.0/08",
                "`10.0.0.0/08`: the prefix length after '/' must be decimal digits without leading zeros",
            ),
            (
                "10.0.0.0/8/8",
                "`10.0.0.0/8/8`: the prefix length after '/' must be decimal digits without leading zeros",
            ),
            ("10.0.0.0/33", "`10.0.0.0/33`: prefix length exceeds 32 for IPv4"),
            ("10.0.0.0/99999999999", "`10.0.0.0/99999999999`: prefix length exceeds 32 for IPv4"),
            ("::/129", "`::/129`: prefix length exceeds 128 for IPv6"),
            ("10.0.0.1/8", "10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"),
            ("2001:db8::1/64", "2001:db8::1/64 has host bits set (did you mean 2001:db8::/64?)"),
            ("255.255.255.255/0", "255.255.255.255/0 has host bits set (did you mean 0.0.0.0/0?)"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Cidr>().expect_err(input);
            assert_eq!(err.to_string(), expected, "input {input:?}");
        }
    }

    #[test]
    fn bits_masks_and_accessors() {
        let v4 = cidr("10.13.0.0/16");
        assert_eq!(v4.family(), Family::V4);
        assert_eq!(v4.len(), 16);
        assert_eq!(v4.addr_bits(), 0x0a0d_0000);
        assert_eq!(v4.mask_bits(), 0xffff_0000);
        assert_eq!(v4.v4(), Some(Ipv4Addr::new(10, 13, 0, 0)));
        assert_eq!(v4.v6(), None);

        let v6 = cidr("2001:db8:bad::/48");
        assert_eq!(v6.family(), Family::V6);
        assert_eq!(v6.addr_bits(), 0x2001_0db8_0bad_u128 << 80);
        assert_eq!(v6.mask_bits(), u128::MAX << 80);
        assert_eq!(v6.v4(), None);

        assert_eq!(cidr("0.0.0.0/0").mask_bits(), 0);
        assert_eq!(cidr("::/0").mask_bits(), 0);
        assert_eq!(cidr("1.2.3.4/32").mask_bits(), 0xffff_ffff);
        assert_eq!(cidr("::1/128").mask_bits(), u128::MAX);
    }

    #[test]
    fn containment() {
        let net = cidr("10.13.0.0/16");
        assert!(net.contains("10.13.255.1".parse().unwrap()));
        assert!(!net.contains("10.14.0.0".parse().unwrap()));
        assert!(!net.contains("::ffff:10.13.0.1".parse().unwrap()));
        assert!(net.contains_cidr(&cidr("10.13.7.7/32")));
        assert!(net.contains_cidr(&net));
        assert!(!net.contains_cidr(&cidr("10.0.0.0/8")));
        assert!(!net.contains_cidr(&cidr("::/0")));
        assert!(cidr("0.0.0.0/0").contains("255.255.255.255".parse().unwrap()));
        assert!(cidr("::/0").contains_cidr(&cidr("fd00:dead::/32")));
        assert!(!cidr("::/0").contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn constructors() {
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(Cidr::new_truncating(addr, 8), Ok(cidr("10.0.0.0/8")));
        assert_eq!(
            Cidr::new(addr, 8).unwrap_err().to_string(),
            "10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            Cidr::new_truncating(addr, 40).unwrap_err().to_string(),
            "`10.0.0.1/40`: prefix length exceeds 32 for IPv4"
        );
        assert_eq!(Cidr::host(addr), cidr("10.0.0.1/32"));
    }

    #[test]
    fn order_is_family_then_address_then_length() {
        let mut list: Vec<Cidr> = ["::/0", "10.0.0.0/16", "10.0.0.0/8", "9.0.0.0/8", "2001:db8::/32"]
            .into_iter()
            .map(cidr)
            .collect();
        list.sort();
        let printed: Vec<String> = list.iter().map(Cidr::to_string).collect();
        assert_eq!(printed, ["9.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16", "::/0", "2001:db8::/32"]);
    }

    #[test]
    fn serde_round_trip() {
        let list: Vec<Cidr> = serde_norway::from_str("[10.0.0.0/8, '2001:db8::/32']").unwrap();
        assert_eq!(serde_norway::to_string(&list).unwrap(), "- 10.0.0.0/8\n- 2001:db8::/32\n");
    }

    /// Parsing never panics: many random strings over an alphabet biased toward CIDR syntax.
    #[test]
    fn parsing_random_strings_never_panics() {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEF.:/%-+ x\xc3\xa9";
        let mut state: u64 = 0x5eed_5eed_5eed_5eed;
        let mut next = move || {
            // Knuth's MMIX LCG; the high bits are the well-mixed ones.
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        const SEEDS: &[&str] = &["10.0.0.0/8", "198.51.100.7", "2001:db8:bad::/48", "::/0"];
        let mut accepted = 0;
        for round in 0..50_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                // Fully random.
                let len = next() % 24;
                (0..len).map(|_| ALPHABET[next() % ALPHABET.len()]).collect()
            } else {
                // A valid CIDR with a few random edits: near misses reach the deeper checks.
                let mut bytes = SEEDS[next() % SEEDS.len()].as_bytes().to_vec();
                for _ in 0..1 + next() % 3 {
                    let at = next() % (bytes.len() + 1);
                    let byte = ALPHABET[next() % ALPHABET.len()];
                    match next() % 3 {
                        0 if at < bytes.len() => bytes[at] = byte,
                        1 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, byte),
                    }
                }
                bytes
            };
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(c) = text.parse::<Cidr>() {
                accepted += 1;
                // Whatever is accepted prints to a form that parses back to itself.
                assert_eq!(c.to_string().parse::<Cidr>(), Ok(c), "input {text:?}");
            }
        }
        assert!(accepted > 0, "the generator should hit some valid CIDRs");
    }
}
