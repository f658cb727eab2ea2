//! ELF objects for generated programs, for inspection with standard tools
//! (`llvm-objdump -d`, `readelf`) and for loaders that read BPF objects.
//!
//! One object per program: the code in a section named after the hook (`xdp`, `tc`),
//! a global function symbol, a legacy `maps` section of `struct bpf_map_def` with one
//! symbol per map, `R_BPF_64_64` relocations on every `LD_IMM64` that names a map, and a
//! `license` section.

use crate::maps::MapDef;
use crate::node::load::sys_kind;
use crate::node::Object;
use object::write::{Object as ElfObject, Relocation, StandardSegment, Symbol, SymbolSection};
use object::SymbolScope;
use object::{Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind};
use sluice_verifier_sim::spec::{ProgKind, SockAddrHook};
use thiserror::Error;

/// `R_BPF_64_64`: a 64-bit immediate in an `LD_IMM64` pair.
const R_BPF_64_64: u32 = 1;

/// Why an object could not be written.
#[derive(Debug, Error)]
pub enum ElfError {
    #[error("program `{name}`: {source}")]
    Encode {
        name: String,
        #[source]
        source: sluice_asm::EncodeError,
    },
    #[error("program `{name}` refers to map `{map}`, which it does not define")]
    UnknownMap { name: String, map: String },
    #[error("program `{name}`: writing ELF: {message}")]
    Write { name: String, message: String },
}

/// The ELF section a program of this kind goes in.
pub fn section_name(kind: ProgKind) -> &'static str {
    match kind {
        ProgKind::Xdp => "xdp",
        ProgKind::SchedCls => "tc",
        ProgKind::SockOps => "sockops",
        ProgKind::SkMsg => "sk_msg",
        ProgKind::CgroupSockAddr(hook) => match hook {
            SockAddrHook::Connect4 => "cgroup/connect4",
            SockAddrHook::Connect6 => "cgroup/connect6",
            SockAddrHook::UdpSendmsg4 => "cgroup/sendmsg4",
            SockAddrHook::UdpSendmsg6 => "cgroup/sendmsg6",
            SockAddrHook::UdpRecvmsg4 => "cgroup/recvmsg4",
            SockAddrHook::UdpRecvmsg6 => "cgroup/recvmsg6",
            SockAddrHook::Getpeername4 => "cgroup/getpeername4",
            SockAddrHook::Getpeername6 => "cgroup/getpeername6",
        },
    }
}

fn map_def_bytes(def: &MapDef) -> [u8; 20] {
    let mut b = [0u8; 20];
    let fields = [sys_kind(def.kind).type_id(), def.key_size, def.value_size, def.max_entries, def.flags];
    for (i, f) in fields.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&f.to_le_bytes());
    }
    b
}

/// The ELF object of one program.
pub fn write_object(obj: &Object) -> Result<Vec<u8>, ElfError> {
    let name = obj.name.clone();
    let code =
        obj.program.encode_unrelocated().map_err(|source| ElfError::Encode { name: name.clone(), source })?;
    let mut elf = ElfObject::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let text = elf.add_section(Vec::new(), section_name(obj.kind).as_bytes().to_vec(), SectionKind::Text);
    elf.append_section_data(text, &code, 8);
    elf.add_symbol(Symbol {
        name: obj.name.as_bytes().to_vec(),
        value: 0,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let maps = elf.add_section(
        elf.segment_name(StandardSegment::Data).to_vec(),
        b"maps".to_vec(),
        SectionKind::Data,
    );
    let mut map_symbols = std::collections::BTreeMap::new();
    for def in &obj.maps {
        let off = elf.append_section_data(maps, &map_def_bytes(def), 4);
        let sym = elf.add_symbol(Symbol {
            name: def.name.as_bytes().to_vec(),
            value: off,
            size: 20,
            kind: SymbolKind::Data,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(maps),
            flags: SymbolFlags::None,
        });
        map_symbols.insert(def.name, sym);
    }
    for (slot, map) in obj.program.map_relocations() {
        let symbol = *map_symbols
            .get(map.as_str())
            .ok_or_else(|| ElfError::UnknownMap { name: name.clone(), map: map.clone() })?;
        elf.add_relocation(
            text,
            Relocation {
                offset: (slot * 8) as u64,
                symbol,
                addend: 0,
                flags: RelocationFlags::Elf { r_type: R_BPF_64_64 },
            },
        )
        .map_err(|e| ElfError::Write { name: name.clone(), message: e.to_string() })?;
    }
    let license = elf.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    elf.append_section_data(license, b"GPL\0", 1);
    elf.write().map_err(|e| ElfError::Write { name, message: e.to_string() })
}
