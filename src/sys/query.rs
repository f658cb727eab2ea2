//! `BPF_PROG_QUERY`: what is attached to a hook (the mprog layout of 6.6+, which tcx
//! hooks answer with program and link ids and a revision).

use super::attr::{ptr_u64, Attr};
use super::{bpf_call, BpfCmd, Errno, Syscall};

/// `union bpf_attr`'s `query` member (6.6+ layout with the mprog fields).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ProgQueryAttr {
    target: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad0: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

// SAFETY: `#[repr(C)]`, integer fields only, the padding after `count` spelled out; the
// size assertion below catches a field added without its padding.
unsafe impl Attr for ProgQueryAttr {}
const _: () = assert!(std::mem::size_of::<ProgQueryAttr>() == 64);

/// What runs on one hook, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgQuery {
    pub prog_ids: Vec<u32>,
    /// The link of each program (0 for one attached without a link).
    pub link_ids: Vec<u32>,
    pub revision: u64,
}

/// The programs attached at `attach_type` of `target` (an ifindex for tcx hooks). The id
/// arrays grow and the query is repeated while the kernel says more are attached
/// (`ENOSPC`); other errnos are returned as they are.
pub fn prog_query(sys: &dyn Syscall, target: u32, attach_type: u32) -> Result<ProgQuery, Errno> {
    let mut room = 8usize;
    loop {
        let mut progs = vec![0u32; room];
        let mut links = vec![0u32; room];
        let mut attr = ProgQueryAttr::zeroed();
        attr.target = target;
        attr.attach_type = attach_type;
        attr.prog_ids = ptr_u64(progs.as_mut_ptr());
        attr.link_ids = ptr_u64(links.as_mut_ptr());
        attr.count = room as u32;
        // SAFETY: `prog_ids` and `link_ids` point at `room` writable u32s each, alive
        // across the call; the kernel writes at most `count` of each.
        match unsafe { bpf_call(sys, BpfCmd::ProgQuery, &mut attr) } {
            Ok(_) => {
                let n = (attr.count as usize).min(room);
                progs.truncate(n);
                links.truncate(n);
                return Ok(ProgQuery { prog_ids: progs, link_ids: links, revision: attr.revision });
            }
            Err(Errno(libc::ENOSPC)) if room < 1 << 16 => room = (attr.count as usize).max(room * 2),
            Err(errno) => return Err(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_query_layout_matches_the_kernel() {
        use std::mem::offset_of;
        // offsetof in the 6.18 UAPI `union bpf_attr`, `query` member.
        assert_eq!(offset_of!(ProgQueryAttr, prog_ids), 16);
        assert_eq!(offset_of!(ProgQueryAttr, count), 24);
        assert_eq!(offset_of!(ProgQueryAttr, prog_attach_flags), 32);
        assert_eq!(offset_of!(ProgQueryAttr, link_ids), 40);
        assert_eq!(offset_of!(ProgQueryAttr, revision), 56);
    }
}
