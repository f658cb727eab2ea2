//! A small reader of kernel BTF (`/sys/kernel/btf/vmlinux`), enough to find what raw
//! `bpf()` needs for iterator and kfunc programs (issue 11): a type's id by kind and name
//! (`bpf_iter_tcp`'s FUNC id is an iterator program's `attach_btf_id`), and a struct
//! member's byte offset (`struct sock_common`'s fields, `struct bpf_iter__tcp`'s context),
//! so nothing is hand-copied from a kernel header.
//!
//! Format (Documentation/bpf/btf.rst): a header `{magic 0xeB9F: u16, version: u8, flags:
//! u8, hdr_len, type_off, type_len, str_off, str_len: u32}`, offsets counted from the end of
//! the header; the type section is a run of `struct btf_type {name_off, info, size_or_type:
//! u32}` (`info`: vlen in bits 0..16, kind in bits 24..29, kind_flag in bit 31), each
//! followed by kind-specific data whose length depends on kind and vlen; type ids count
//! from 1 in that order (0 is `void`). Host byte order (BTF from this kernel).
//!
//! Contract: [`Btf::parse`] checks every length before reading (a malformed blob is an
//! error, never a panic); unknown kinds are an error, since their length is unknown.

use std::path::Path;
use thiserror::Error;

/// Where the running kernel exposes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
/// `struct btf_header`'s fixed part.
const HEADER_LEN: usize = 24;
/// `struct btf_type`.
const TYPE_LEN: usize = 12;

/// Why BTF could not be read.
#[derive(Debug, Error)]
pub enum BtfError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BTF: {0}")]
    Malformed(String),
}

/// BTF kinds (`BTF_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Int = 1,
    Ptr = 2,
    Array = 3,
    Struct = 4,
    Union = 5,
    Enum = 6,
    Fwd = 7,
    Typedef = 8,
    Volatile = 9,
    Const = 10,
    Restrict = 11,
    Func = 12,
    FuncProto = 13,
    Var = 14,
    Datasec = 15,
    Float = 16,
    DeclTag = 17,
    TypeTag = 18,
    Enum64 = 19,
}

impl Kind {
    fn from_u8(k: u8) -> Option<Kind> {
        use Kind::*;
        Some(match k {
            1 => Int,
            2 => Ptr,
            3 => Array,
            4 => Struct,
            5 => Union,
            6 => Enum,
            7 => Fwd,
            8 => Typedef,
            9 => Volatile,
            10 => Const,
            11 => Restrict,
            12 => Func,
            13 => FuncProto,
            14 => Var,
            15 => Datasec,
            16 => Float,
            17 => DeclTag,
            18 => TypeTag,
            19 => Enum64,
            _ => return None,
        })
    }

    /// Bytes of kind-specific data after the `btf_type`, for `vlen` entries.
    fn extra_len(self, vlen: usize) -> usize {
        use Kind::*;
        match self {
            Int | Var | DeclTag => 4,
            Array => 12,
            Struct | Union | Datasec | Enum64 => 12 * vlen,
            Enum | FuncProto => 8 * vlen,
            Ptr | Fwd | Typedef | Volatile | Const | Restrict | Func | Float | TypeTag => 0,
        }
    }
}

/// A struct or union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// The member's type id.
    pub type_id: u32,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
}

/// One type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub kind: Kind,
    pub name: String,
    /// `size` (int, struct, union, enum, datasec) or `type` (the rest) of `btf_type`.
    pub size_or_type: u32,
    /// Members of a struct or union; empty otherwise.
    pub members: Vec<Member>,
}

/// Parsed BTF: types by id (index 0 is id 1).
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("a u32 at {at} runs past the end ({} bytes)", b.len())))
}

fn string(strs: &[u8], off: u32) -> Result<String, BtfError> {
    let rest = strs
        .get(off as usize..)
        .ok_or_else(|| BtfError::Malformed(format!("name offset {off} past the string section")))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| BtfError::Malformed(format!("name at {off} is not NUL-terminated")))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

impl Btf {
    /// The running kernel's BTF.
    pub fn vmlinux() -> Result<Btf, BtfError> {
        Btf::read(Path::new(VMLINUX))
    }

    pub fn read(path: &Path) -> Result<Btf, BtfError> {
        let bytes = std::fs::read(path)
            .map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Btf::parse(&bytes)
    }

    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        let magic = b.get(..2).map(|m| u16::from_ne_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Malformed(format!("magic {magic:x?}, not {MAGIC:#x}")));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::Malformed(format!("header length {hdr_len} < {HEADER_LEN}")));
        }
        let section = |off_at: usize| -> Result<&[u8], BtfError> {
            let (off, len) = (u32_at(b, off_at)? as usize, u32_at(b, off_at + 4)? as usize);
            let start = hdr_len.checked_add(off);
            start.and_then(|s| b.get(s..s.checked_add(len)?)).ok_or_else(|| {
                BtfError::Malformed(format!("section {off}+{len} past the end ({} bytes)", b.len()))
            })
        };
        let (ts, strs) = (section(8)?, section(16)?);
        let mut types = Vec::new();
        let mut at = 0;
        while at < ts.len() {
            let (name_off, info, size_or_type) = (u32_at(ts, at)?, u32_at(ts, at + 4)?, u32_at(ts, at + 8)?);
            let raw_kind = ((info >> 24) & 0x1f) as u8;
            let kind = Kind::from_u8(raw_kind).ok_or_else(|| {
                BtfError::Malformed(format!("type {} has unknown kind {raw_kind}", types.len() + 1))
            })?;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let data = at + TYPE_LEN;
            let mut members = Vec::new();
            if matches!(kind, Kind::Struct | Kind::Union) {
                for i in 0..vlen {
                    let m = data + 12 * i;
                    let offset = u32_at(ts, m + 8)?;
                    members.push(Member {
                        name: string(strs, u32_at(ts, m)?)?,
                        type_id: u32_at(ts, m + 4)?,
                        // With kind_flag, the top byte is a bitfield's size.
                        bit_offset: if kind_flag { offset & 0xff_ffff } else { offset },
                    });
                }
            }
            types.push(Type { kind, name: string(strs, name_off)?, size_or_type, members });
            at = data + kind.extra_len(vlen);
        }
        if at != ts.len() {
            return Err(BtfError::Malformed(format!(
                "the last type runs past the type section ({at} > {})",
                ts.len()
            )));
        }
        Ok(Btf { types })
    }

    /// The type with id `id` (1-based; 0 is `void`, which has no entry).
    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The id of the first type of `kind` named `name`.
    pub fn find(&self, kind: Kind, name: &str) -> Option<u32> {
        self.types.iter().position(|t| t.kind == kind && t.name == name).map(|i| i as u32 + 1)
    }

    /// The byte offset of `member` in the struct `strukt` (a member of a nested anonymous
    /// struct or union is found through it, as C lets one name it).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Option<u32> {
        let id = self.find(Kind::Struct, strukt)?;
        self.find_member(id, member, 0).filter(|bits| bits % 8 == 0).map(|bits| bits / 8)
    }

    fn find_member(&self, id: u32, member: &str, base: u32) -> Option<u32> {
        let t = self.get(id)?;
        for m in &t.members {
            if m.name == member {
                return Some(base + m.bit_offset);
            }
            if m.name.is_empty() {
                let inner = self.get(m.type_id)?;
                if matches!(inner.kind, Kind::Struct | Kind::Union) {
                    if let Some(o) = self.find_member(m.type_id, member, base + m.bit_offset) {
                        return Some(o);
                    }
                }
            }
        }
        None
    }

    /// How many types there are.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with the given types (`(name_off, info, size_or_type, extra words)`) and strings.
    fn blob(types: &[(u32, u32, u32, &[u32])], strs: &[u8]) -> Vec<u8> {
        let mut ts = Vec::new();
        for (n, i, s, extra) in types {
            for w in [*n, *i, *s].iter().chain(extra.iter()) {
                ts.extend_from_slice(&w.to_ne_bytes());
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_ne_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [HEADER_LEN as u32, 0, ts.len() as u32, ts.len() as u32, strs.len() as u32] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&ts);
        b.extend_from_slice(strs);
        b
    }

    const STRS: &[u8] = b"\0int\0pair\0a\0b\0inner\0c\0get\0";
    fn info(kind: Kind, vlen: u32, kind_flag: bool) -> u32 {
        ((kind as u32) << 24) | vlen | (u32::from(kind_flag) << 31)
    }

    fn sample() -> Vec<u8> {
        blob(
            &[
                // 1: int (4 bytes)
                (1, info(Kind::Int, 0, false), 4, &[32]),
                // 2: struct inner { int c; } at bit 0
                (14, info(Kind::Struct, 1, false), 4, &[20, 1, 0]),
                // 3: struct pair { int a; int b; struct inner; } (b a bitfield: kind_flag)
                (5, info(Kind::Struct, 3, true), 12, &[10, 1, 0, 12, 1, (3 << 24) | 32, 0, 2, 64]),
                // 4: func get (type 0 for brevity)
                (22, info(Kind::Func, 0, false), 0, &[]),
            ],
            STRS,
        )
    }

    #[test]
    fn finds_types_and_member_offsets() {
        let btf = Btf::parse(&sample()).expect("parses");
        let cases: [(&str, Option<u32>, Option<u32>); 4] = [
            ("find func get", btf.find(Kind::Func, "get"), Some(4)),
            ("pair.b (bitfield offset without its size)", btf.member_offset("pair", "b"), Some(4)),
            ("pair.c through the anonymous member", btf.member_offset("pair", "c"), Some(8)),
            ("pair.z", btf.member_offset("pair", "z"), None),
        ];
        for (what, actual, expected) in cases {
            assert_eq!(actual, expected, "{what}");
        }
        assert_eq!(btf.len(), 4);
    }

    #[test]
    fn rejects_malformed_blobs_without_panicking() {
        let good = sample();
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        let mut bad_kind = good.clone();
        bad_kind[HEADER_LEN + 7] = 0x1f; // type 1's kind byte
        let cases: [(&str, Vec<u8>, &str); 4] = [
            ("empty", Vec::new(), "magic"),
            ("bad magic", bad_magic, "magic"),
            ("truncated", good[..good.len() - 10].to_vec(), "past the end"),
            ("unknown kind", bad_kind, "unknown kind"),
        ];
        for (what, bytes, want) in cases {
            let err = Btf::parse(&bytes).expect_err(what).to_string();
            assert!(err.contains(want), "{what}: expected an error with {want:?}, got {err:?}");
        }
    }
}
