//! Each `#[repr(C)]` kernel structure of `uapi` against the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): every member the kernel declares, anonymous unions and
//! structs flattened, has the same offset and size in our definition, and the sizes of the
//! whole structures agree.

use sluice_verifier_sim::uapi::{
    BpfFibLookup, BpfSockAddr, BpfSockOps, BpfTunnelKey, Field, Layout, SkBuff, SkMsgMd, XdpMd,
};
use std::collections::HashMap;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// One BTF type, as much of it as the check needs.
#[derive(Debug, Clone)]
struct Type {
    name: String,
    kind: u32,
    /// `size` for INT/STRUCT/UNION/ENUM, `type` for PTR/TYPEDEF/modifiers.
    size_or_type: u32,
    /// (element type, count) for ARRAY.
    array: Option<(u32, u32)>,
    /// (name, type, bit offset) for STRUCT/UNION.
    members: Vec<(String, u32, u32)>,
}

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parse the type section (`btf_header`, then `btf_type` records with their trailers).
fn parse(btf: &[u8]) -> Vec<Type> {
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(btf, 4) as usize;
    let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
    let (str_off, str_len) = (u32_at(btf, 16) as usize, u32_at(btf, 20) as usize);
    let types = &btf[hdr_len + type_off..hdr_len + type_off + type_len];
    let strs = &btf[hdr_len + str_off..hdr_len + str_off + str_len];
    let name = |off: u32| {
        let s = &strs[off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]).into_owned()
    };
    let mut out = vec![Type { name: String::new(), kind: 0, size_or_type: 0, array: None, members: vec![] }];
    let mut p = 0;
    while p < types.len() {
        let (name_off, info, size_or_type) = (u32_at(types, p), u32_at(types, p + 4), u32_at(types, p + 8));
        p += 12;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let bitfields = info >> 31 == 1;
        let mut t = Type { name: name(name_off), kind, size_or_type, array: None, members: vec![] };
        match kind {
            INT | VAR | DECL_TAG => p += 4,
            ARRAY => {
                t.array = Some((u32_at(types, p), u32_at(types, p + 8)));
                p += 12;
            }
            STRUCT | UNION => {
                for _ in 0..vlen {
                    let off = u32_at(types, p + 8);
                    let bit_off = if bitfields { off & 0xff_ffff } else { off };
                    t.members.push((name(u32_at(types, p)), u32_at(types, p + 4), bit_off));
                    p += 12;
                }
            }
            ENUM | FUNC_PROTO => p += 8 * vlen,
            DATASEC | ENUM64 => p += 12 * vlen,
            _ => {}
        }
        out.push(t);
    }
    out
}

fn size_of_type(types: &[Type], mut id: u32) -> usize {
    loop {
        let t = &types[id as usize];
        match t.kind {
            TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
            PTR => return 8,
            ARRAY => {
                let (elem, n) = t.array.expect("arrays carry their element");
                return size_of_type(types, elem) * n as usize;
            }
            INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => return t.size_or_type as usize,
            k => panic!("type {id} of kind {k} has no size here"),
        }
    }
}

/// Every named member of struct `id`, anonymous unions and structs flattened.
fn members(types: &[Type], id: u32, base_bits: u32, out: &mut Vec<Field>) {
    for (name, ty, bits) in &types[id as usize].members {
        let off_bits = base_bits + bits;
        let kind = types[*ty as usize].kind;
        if name.is_empty() && (kind == STRUCT || kind == UNION) {
            members(types, *ty, off_bits, out);
            continue;
        }
        let name: &'static str = Box::leak(name.clone().into_boxed_str());
        out.push(Field { name, off: (off_bits / 8) as usize, size: size_of_type(types, *ty) });
    }
}

fn check<T: Layout>(types: &[Type], by_name: &HashMap<&str, u32>) {
    let id = by_name[T::BTF_NAME];
    let mut kernel = Vec::new();
    members(types, id, 0, &mut kernel);
    let ours = T::fields();
    let key = |f: &Field| (f.name, f.off, f.size);
    let mut k: Vec<_> = kernel.iter().map(key).collect();
    let mut o: Vec<_> = ours.iter().map(key).collect();
    k.sort();
    o.sort();
    assert_eq!(o, k, "{}: (name, offset, size) of every member, ours vs the kernel's BTF", T::BTF_NAME);
    assert_eq!(T::size(), types[id as usize].size_or_type as usize, "sizeof(struct {})", T::BTF_NAME);
}

#[test]
fn uapi_structs_match_the_kernel_btf() {
    let btf = match std::fs::read(VMLINUX) {
        Ok(b) => b,
        Err(e) => {
            let why = format!("{VMLINUX}: {e}");
            assert!(std::env::var("SLUICE_REQUIRE_KERNEL").as_deref() != Ok("1"), "required: {why}");
            eprintln!("skipped: {why}");
            return;
        }
    };
    let types = parse(&btf);
    let by_name: HashMap<&str, u32> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind == STRUCT)
        .map(|(i, t)| (t.name.as_str(), i as u32))
        .collect();
    check::<SkBuff>(&types, &by_name);
    check::<XdpMd>(&types, &by_name);
    check::<BpfSockAddr>(&types, &by_name);
    check::<BpfSockOps>(&types, &by_name);
    check::<SkMsgMd>(&types, &by_name);
    check::<BpfFibLookup>(&types, &by_name);
    check::<BpfTunnelKey>(&types, &by_name);
}

/// The simulator's context tables (what programs may load and store) lie inside the
/// `uapi` structures' fields: each entry starts at a field's offset, or inside an array
/// field at an element boundary, and does not run past the field.
#[test]
fn context_tables_lie_inside_the_uapi_fields() {
    use sluice_verifier_sim::spec::{CtxField, SK_BUFF, SK_MSG_MD, SOCK_OPS, XDP_MD};
    fn within<T: Layout>(table: &[CtxField]) {
        let fields = T::fields();
        for e in table {
            let (off, end) = (e.off as usize, e.off as usize + usize::from(e.size));
            let inside =
                fields.iter().any(|f| f.off <= off && end <= f.off + f.size && (off - f.off) % 4 == 0);
            assert!(inside, "{}: table entry {} at {off}..{end} lies in no field", T::BTF_NAME, e.name);
        }
    }
    within::<XdpMd>(XDP_MD);
    within::<SkBuff>(SK_BUFF);
    within::<BpfSockOps>(SOCK_OPS);
    within::<SkMsgMd>(SK_MSG_MD);
}
