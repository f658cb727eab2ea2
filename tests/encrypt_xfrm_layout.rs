//! The xfrm netlink messages of the IPsec mode, byte by byte against the kernel's struct
//! layouts (`include/uapi/linux/xfrm.h`; this machine's /usr/include is 6.1, the layouts are
//! ABI and have not changed since). The structs are mirrored here as `repr(C)` Rust types
//! (`xfrm_address_t` is a union holding `__be32`, so 4-aligned: `[u32; 4]`); their sizes are
//! checked against the header's, and every field our `XFRM_MSG_NEWSA` / `XFRM_MSG_NEWPOLICY`
//! carries is read back at `offset_of!` and compared with what the mode asked for, for the
//! states and policies `encrypt::ipsec::states_and_policies` programs (so the marks the BPF
//! programs set are the marks in the messages). The byte comparison with `ip xfrm` is a unit
//! test of `sluice::netlink::xfrm`.

use sluice::encrypt::ipsec::{self, IpsecPeer};
use sluice::model::encryption::parse_ipsec_key;
use sluice::netlink::xfrm::{self, Dir, Policy, State};
use std::mem::{offset_of, size_of};
use std::net::IpAddr;

#[allow(dead_code)]
#[repr(C)]
struct XfrmSelector {
    daddr: [u32; 4],
    saddr: [u32; 4],
    dport: u16,
    dport_mask: u16,
    sport: u16,
    sport_mask: u16,
    family: u16,
    prefixlen_d: u8,
    prefixlen_s: u8,
    proto: u8,
    ifindex: i32,
    user: u32,
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmId {
    daddr: [u32; 4],
    spi: u32,
    proto: u8,
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmLifetimeCfg {
    limits: [u64; 8],
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmLifetimeCur {
    bytes: u64,
    packets: u64,
    add_time: u64,
    use_time: u64,
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmStats {
    replay_window: u32,
    replay: u32,
    integrity_failed: u32,
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmUsersaInfo {
    sel: XfrmSelector,
    id: XfrmId,
    saddr: [u32; 4],
    lft: XfrmLifetimeCfg,
    curlft: XfrmLifetimeCur,
    stats: XfrmStats,
    seq: u32,
    reqid: u32,
    family: u16,
    mode: u8,
    replay_window: u8,
    flags: u8,
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmUserpolicyInfo {
    sel: XfrmSelector,
    lft: XfrmLifetimeCfg,
    curlft: XfrmLifetimeCur,
    priority: u32,
    index: u32,
    dir: u8,
    action: u8,
    flags: u8,
    share: u8,
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmUserTmpl {
    id: XfrmId,
    family: u16,
    saddr: [u32; 4],
    reqid: u32,
    mode: u8,
    share: u8,
    optional: u8,
    aalgos: u32,
    ealgos: u32,
    calgos: u32,
}

#[allow(dead_code)]
#[repr(C)]
struct XfrmAlgoAead {
    alg_name: [u8; 64],
    alg_key_len: u32,
    alg_icv_len: u32,
}

/// `sizeof(struct nlmsghdr)`, `sizeof(struct nlattr)`.
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
/// `XFRM_POLICY_ALLOW`.
const XFRM_POLICY_ALLOW: u8 = 0;

#[test]
fn the_mirrors_have_the_kernels_sizes() {
    // Sizes from xfrm.h on x86-64 (and every 64-bit ABI).
    let cases = [
        ("xfrm_selector", size_of::<XfrmSelector>(), 56),
        ("xfrm_id", size_of::<XfrmId>(), 24),
        ("xfrm_lifetime_cfg", size_of::<XfrmLifetimeCfg>(), 64),
        ("xfrm_lifetime_cur", size_of::<XfrmLifetimeCur>(), 32),
        ("xfrm_usersa_info", size_of::<XfrmUsersaInfo>(), 224),
        ("xfrm_userpolicy_info", size_of::<XfrmUserpolicyInfo>(), 168),
        ("xfrm_user_tmpl", size_of::<XfrmUserTmpl>(), 64),
        ("xfrm_algo_aead", size_of::<XfrmAlgoAead>(), 72),
    ];
    for (name, ours, kernel) in cases {
        assert_eq!(ours, kernel, "sizeof(struct {name})");
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}
fn addr_at(b: &[u8], at: usize, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&b[at..at + 4]).unwrap()),
        IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(&b[at..at + 16]).unwrap()),
    }
}

/// The attributes after the fixed header: `(type, payload)`.
fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= NLA_HDRLEN {
        let len = usize::from(u16_at(b, 0));
        assert!(len >= NLA_HDRLEN && len <= b.len(), "attribute length {len} of {} left", b.len());
        out.push((u16_at(b, 2), b[NLA_HDRLEN..len].to_vec()));
        b = &b[(len + 3) & !3..];
    }
    out
}

fn mark_of(attrs: &[(u16, Vec<u8>)]) -> Option<(u32, u32)> {
    attrs.iter().find(|(t, _)| *t == xfrm::attr::MARK).map(|(_, p)| {
        assert_eq!(p.len(), 8, "sizeof(struct xfrm_mark)");
        (u32_at(p, 0), u32_at(p, 4))
    })
}

fn family(a: IpAddr) -> u16 {
    if a.is_ipv4() {
        libc::AF_INET as u16
    } else {
        libc::AF_INET6 as u16
    }
}

fn fixture() -> (Vec<State>, Vec<Policy>) {
    let keys: Vec<_> = [
        "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128",
        "4+ rfc4106(gcm(aes)) 00112233445566778899aabbccddeeff00112233 128",
    ]
    .iter()
    .map(|l| parse_ipsec_key(l).unwrap())
    .collect();
    let peer = IpsecPeer {
        node_id: 0x1234,
        address: "172.16.0.2".parse().unwrap(),
        boot_id: "66666666-7777-8888-9999-000000000000".into(),
        prefixes: vec!["10.0.2.0/24".parse().unwrap(), "fd00:0:2::/64".parse().unwrap()],
    };
    ipsec::states_and_policies(
        "172.16.0.1".parse().unwrap(),
        "11111111-2222-3333-4444-555555555555",
        &["10.0.1.0/24".parse().unwrap(), "fd00:0:1::/64".parse().unwrap()],
        &peer,
        &keys,
    )
}

#[test]
fn newsa_fields_sit_where_xfrm_usersa_info_puts_them() {
    let (states, _) = fixture();
    assert_eq!(states.len(), 4, "out and in per key");
    for s in &states {
        let mut req = s.new_request();
        let msg = req.finish(1).expect("encodes").to_vec();
        assert_eq!(u16_at(&msg, 4), xfrm::msg_type::NEWSA, "nlmsg_type");
        let b = &msg[NLMSG_HDRLEN..];
        let id = offset_of!(XfrmUsersaInfo, id);
        let what = format!("state {} -> {} spi {}", s.src, s.dst, s.spi);
        assert_eq!(addr_at(b, id + offset_of!(XfrmId, daddr), s.dst), s.dst, "{what}: id.daddr");
        assert_eq!(
            b[id + offset_of!(XfrmId, spi)..][..4],
            s.spi.to_be_bytes(),
            "{what}: id.spi (network order)"
        );
        assert_eq!(b[id + offset_of!(XfrmId, proto)], xfrm::ESP, "{what}: id.proto");
        assert_eq!(addr_at(b, offset_of!(XfrmUsersaInfo, saddr), s.src), s.src, "{what}: saddr");
        assert_eq!(u32_at(b, offset_of!(XfrmUsersaInfo, reqid)), s.reqid, "{what}: reqid");
        assert_eq!(u16_at(b, offset_of!(XfrmUsersaInfo, family)), family(s.dst), "{what}: family");
        assert_eq!(b[offset_of!(XfrmUsersaInfo, mode)], xfrm::MODE_TUNNEL, "{what}: mode");
        let lft = offset_of!(XfrmUsersaInfo, lft);
        for i in 0..4 {
            assert_eq!(
                b[lft + 8 * i..][..8],
                xfrm::INF.to_ne_bytes(),
                "{what}: byte/packet limits are XFRM_INF"
            );
        }
        assert!(b[..offset_of!(XfrmUsersaInfo, id)].iter().all(|&x| x == 0), "{what}: the selector is any");
        let a = attrs(&b[size_of::<XfrmUsersaInfo>()..]);
        let (_, aead) = a.iter().find(|(t, _)| *t == xfrm::attr::ALG_AEAD).expect("XFRMA_ALG_AEAD");
        let name_end = aead.iter().position(|&c| c == 0).unwrap();
        assert_eq!(&aead[..name_end], s.aead.as_bytes(), "{what}: alg_name");
        assert_eq!(
            u32_at(aead, offset_of!(XfrmAlgoAead, alg_key_len)) as usize,
            s.key.len() * 8,
            "{what}: key bits"
        );
        assert_eq!(u32_at(aead, offset_of!(XfrmAlgoAead, alg_icv_len)), s.icv_bits, "{what}: icv bits");
        assert_eq!(&aead[size_of::<XfrmAlgoAead>()..], &s.key[..], "{what}: the key follows the header");
        let m = s.mark.expect("the mode marks every state");
        assert_eq!(mark_of(&a), Some((m.value, m.mask)), "{what}: XFRMA_MARK");
        let out = s.src == IpAddr::from([172, 16, 0, 1]);
        let want = if out {
            (ipsec::encrypt_mark(s.spi as u8, 0x1234), ipsec::MASK_OUT)
        } else {
            (ipsec::decrypt_mark(0x1234), ipsec::MASK_IN)
        };
        assert_eq!((m.value, m.mask), want, "{what}: the mark the BPF side sets");
    }
}

#[test]
fn newpolicy_fields_sit_where_xfrm_userpolicy_info_puts_them() {
    let (_, policies) = fixture();
    assert_eq!(policies.len(), 4, "out and in per prefix pair of one family");
    for p in &policies {
        let mut req = p.new_request();
        let msg = req.finish(1).expect("encodes").to_vec();
        assert_eq!(u16_at(&msg, 4), xfrm::msg_type::NEWPOLICY, "nlmsg_type");
        let b = &msg[NLMSG_HDRLEN..];
        let what = format!("policy {} -> {} {:?}", p.src, p.dst, p.dir);
        let sel = offset_of!(XfrmUserpolicyInfo, sel);
        assert_eq!(
            addr_at(b, sel + offset_of!(XfrmSelector, daddr), p.dst.addr()),
            p.dst.addr(),
            "{what}: sel.daddr"
        );
        assert_eq!(
            addr_at(b, sel + offset_of!(XfrmSelector, saddr), p.src.addr()),
            p.src.addr(),
            "{what}: sel.saddr"
        );
        assert_eq!(
            u16_at(b, sel + offset_of!(XfrmSelector, family)),
            family(p.dst.addr()),
            "{what}: sel.family"
        );
        assert_eq!(b[sel + offset_of!(XfrmSelector, prefixlen_d)], p.dst.len(), "{what}: prefixlen_d");
        assert_eq!(b[sel + offset_of!(XfrmSelector, prefixlen_s)], p.src.len(), "{what}: prefixlen_s");
        assert_eq!(b[sel + offset_of!(XfrmSelector, proto)], 0, "{what}: any protocol");
        assert_eq!(u32_at(b, offset_of!(XfrmUserpolicyInfo, priority)), p.priority, "{what}: priority");
        assert_eq!(b[offset_of!(XfrmUserpolicyInfo, dir)], p.dir as u8, "{what}: dir");
        assert_eq!(b[offset_of!(XfrmUserpolicyInfo, action)], XFRM_POLICY_ALLOW, "{what}: action");
        let a = attrs(&b[size_of::<XfrmUserpolicyInfo>()..]);
        let (_, t) = a.iter().find(|(k, _)| *k == xfrm::attr::TMPL).expect("XFRMA_TMPL");
        assert_eq!(t.len(), size_of::<XfrmUserTmpl>(), "{what}: one template");
        let id = offset_of!(XfrmUserTmpl, id);
        assert_eq!(
            addr_at(t, id + offset_of!(XfrmId, daddr), p.tmpl_dst),
            p.tmpl_dst,
            "{what}: tmpl.id.daddr"
        );
        assert_eq!(
            u32_at(t, id + offset_of!(XfrmId, spi)),
            0,
            "{what}: any SPI (the state's mark picks the key)"
        );
        assert_eq!(t[id + offset_of!(XfrmId, proto)], xfrm::ESP, "{what}: tmpl proto");
        assert_eq!(u16_at(t, offset_of!(XfrmUserTmpl, family)), family(p.tmpl_dst), "{what}: tmpl family");
        assert_eq!(addr_at(t, offset_of!(XfrmUserTmpl, saddr), p.tmpl_src), p.tmpl_src, "{what}: tmpl saddr");
        assert_eq!(u32_at(t, offset_of!(XfrmUserTmpl, reqid)), p.reqid, "{what}: tmpl reqid");
        assert_eq!(t[offset_of!(XfrmUserTmpl, mode)], xfrm::MODE_TUNNEL, "{what}: tmpl mode");
        let m = p.mark.expect("the mode marks every policy");
        assert_eq!(mark_of(&a), Some((m.value, m.mask)), "{what}: XFRMA_MARK");
        let want = match p.dir {
            Dir::Out => (ipsec::MARK_ENCRYPT | 0x1234 << 16, 0xFFFF_0F00),
            _ => (ipsec::decrypt_mark(0x1234), ipsec::MASK_IN),
        };
        assert_eq!((m.value, m.mask), want, "{what}: the mark the BPF side sets, any SPI");
    }
}
