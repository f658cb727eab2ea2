//! `sock_destroy`: the `iter/tcp` program that ends the TCP sockets of revoked connections
//! (issue 11, revocation: "accelerated sockets destroyed with `bpf_sock_destroy` from a
//! socket iterator").
//!
//! Contract:
//! - User space fills [`REVOKE_MAP`] with the [`SockKey`]s of the connections to end, one
//!   per socket: `{local, remote, local port, remote port}` as that socket sees its
//!   connection (addresses IPv4-mapped for IPv4, ports in network order), then runs the
//!   program in each network namespace that may hold such a socket.
//! - For each established TCP socket (IPv4 or IPv6) whose key is in the map, the program
//!   calls the kfunc `bpf_sock_destroy`: the kernel aborts the socket (`tcp_abort`: the
//!   application sees `ECONNABORTED`, the peer an RST), whichever path, tc or socket
//!   layer, its data took. Every other socket is left alone.
//! - The kfunc is found by its BTF id in the running kernel's BTF (6.5 and later); the
//!   socket fields' offsets are the iterator's ([`IterOffsets`], also from BTF).

use super::kit;
use super::sockops::{emit_iter_sock_key, IterOffsets, TCP_ESTABLISHED};
use super::CodegenError;
use crate::maps::sock::{sock_key, SockKey};
use crate::maps::MapDef;
use sluice_asm::{Builder, CallTarget, Insn, JmpCond, Program, Reg, Size};

/// The program's name.
pub const NAME: &str = "sock_destroy";
/// The connections to end, keyed per socket (value unused, one byte).
pub const REVOKE_MAP: &str = "sock_revoke";
/// Keys one run can hold.
pub const REVOKE_MAX: u32 = 65_536;

/// [`REVOKE_MAP`]'s definition: a private hash map of one run.
pub fn revoke_map_def() -> MapDef {
    MapDef::of::<SockKey, u8>(REVOKE_MAP, sluice_verifier_sim::spec::MapKind::Hash, REVOKE_MAX, 0)
}

/// The key slot on the stack.
const KEY: i16 = -(((sock_key::SIZE as i16) + 7) & !7);

/// Generate the program; `destroy_btf_id` is `bpf_sock_destroy`'s id in the kernel's BTF.
pub fn generate(off: IterOffsets, destroy_btf_id: i32) -> Result<Program, CodegenError> {
    let mut b = Builder::new();
    let b = &mut b;
    kit::stack_layout::<SockKey>(b, "key", KEY);
    let done = b.new_label("done");
    b.comment("r6 = the socket; NULL ends the run");
    b.load(Size::DW, Reg::R6, Reg::R1, off.sk_common);
    b.jmp(JmpCond::Eq, Reg::R6, 0, done);
    b.load(Size::B, Reg::R1, Reg::R6, off.state);
    b.jmp(JmpCond::Ne, Reg::R1, TCP_ESTABLISHED, done);
    emit_iter_sock_key(b, &off, KEY, None, done);
    kit::map_lookup(b, REVOKE_MAP, KEY);
    b.jmp(JmpCond::Eq, Reg::R0, 0, done);
    b.comment("revoked: abort it (bpf_sock_destroy)");
    b.mov(Reg::R1, Reg::R6);
    b.emit(Insn::Call(CallTarget::Kfunc { btf_id: destroy_btf_id, module: 0 }));
    b.place(done).comment("iterator programs return 0");
    b.mov(Reg::R0, 0).exit();
    b.build().map_err(|source| CodegenError::Build { object: NAME, source })
}
