//! Independent checksum code for the golden-packet tests: the Internet checksum, CRC32c,
//! and a check of every checksum of an Ethernet frame. Written apart from the datapath and
//! `src/packet` on purpose. Included with `#[path = "support/checksums.rs"] mod checksums;`.
#![allow(dead_code)]

pub fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    acc
}

pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// An SCTP common header (ports, verification tag, CRC32c over the packet) and one DATA-ish
/// chunk.
pub fn sctp_segment(sport: u16, dport: u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(sport.to_be_bytes());
    s.extend(dport.to_be_bytes());
    s.extend(0x1234_5678u32.to_be_bytes());
    s.extend([0u8; 4]);
    s.extend([0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef]);
    let crc = crc32c(&s);
    s[8..12].copy_from_slice(&crc.to_le_bytes());
    s
}

/// Check every checksum of an Ethernet frame; the error says which one fails.
/// Frames whose lengths do not add up (the truncated cases) have nothing to verify.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let complete = match frame.get(12..14) {
        Some([8, 0]) => {
            frame.len() >= 34 && frame.len() >= 14 + usize::from(u16::from_be_bytes([frame[16], frame[17]]))
        }
        Some([0x86, 0xdd]) => {
            frame.len() >= 54 && frame.len() >= 54 + usize::from(u16::from_be_bytes([frame[18], frame[19]]))
        }
        _ => false,
    };
    if !complete {
        return Ok(());
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let l3 = &frame[14..];
    let (proto, l4, pseudo) = match ethertype {
        0x0800 => {
            let ihl = usize::from(l3[0] & 0x0f) * 4;
            if fold(ones_sum(&l3[..ihl], 0)) != 0xffff {
                return Err("IPv4 header checksum".into());
            }
            let total = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
            let l4 = &l3[ihl..total];
            let mut p = ones_sum(&l3[12..20], 0);
            p += u32::from(l3[9]) + l4.len() as u32;
            (l3[9], l4, p)
        }
        0x86dd => {
            let len = usize::from(u16::from_be_bytes([l3[4], l3[5]]));
            let l4 = &l3[40..40 + len];
            let mut p = ones_sum(&l3[8..40], 0);
            p += u32::from(l3[6]) + l4.len() as u32;
            (l3[6], l4, p)
        }
        _ => return Ok(()),
    };
    match proto {
        6 | 17 => {
            if proto == 17 && ethertype == 0x0800 && l4[6..8] == [0, 0] {
                return Ok(());
            }
            if fold(ones_sum(l4, pseudo)) != 0xffff {
                return Err(format!("{} checksum", if proto == 6 { "TCP" } else { "UDP" }));
            }
        }
        132 => {
            let mut s = l4.to_vec();
            let want = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
            s[8..12].fill(0);
            if crc32c(&s) != want {
                return Err("SCTP CRC32c".into());
            }
        }
        _ => {}
    }
    Ok(())
}
