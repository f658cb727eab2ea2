//! Helper calls (`check_helper_call`): argument types, memory arguments, map pairing,
//! then the call's effects on registers, stack and packet pointers.

use super::helpers::{self, Arg, Helper, Ret};
use super::mem::{self, Access};
use super::scalar::Scalar;
use super::state::{Byte, Kind, RegState, State};
use super::walk::Env;
use super::ErrorKind;
use crate::spec::ProgKind;

/// Sizes passed to helpers must stay below this (`BPF_MAX_VAR_SIZ`).
const MAX_VAR_SIZE: u64 = 1 << 29;

/// Stack bytes a helper writes: from `start`, surely `min` bytes, perhaps up to `max`.
struct StackWrite {
    start: usize,
    min: usize,
    max: usize,
}

/// `call helper#id`.
pub fn call(env: &mut Env, st: &mut State, id: i32) -> Result<(), ErrorKind> {
    let h = helpers::lookup(id).ok_or(ErrorKind::UnknownHelper { id })?;
    if !h.kinds.contains(&env.kind) {
        return Err(ErrorKind::HelperNotAllowed { helper: h.name, kind: env.kind });
    }
    let mut map: Option<usize> = None;
    let mut writes: Vec<StackWrite> = Vec::new();
    let mut i = 0;
    while i < h.args.len() {
        let regno = i as u8 + 1;
        let reg = arg_reg(st, regno)?;
        let arg_err =
            |expected| ErrorKind::HelperArg { helper: h.name, arg: regno, expected, found: reg.ty() };
        match h.args[i] {
            Arg::Ctx => {
                if reg.kind != Kind::Ctx || reg.off != 0 || reg.var.const_value() != Some(0) {
                    return Err(arg_err("ctx"));
                }
            }
            Arg::Map => {
                let Kind::ConstMap(m) = reg.kind else { return Err(arg_err("map_ptr")) };
                let spec = env.maps.get(m).ok_or_else(|| arg_err("map_ptr"))?;
                if !helpers::map_allowed(id, spec.kind) {
                    return Err(ErrorKind::HelperMap {
                        helper: h.name,
                        map: spec.name.clone(),
                        map_kind: spec.kind,
                    });
                }
                map = Some(m);
            }
            Arg::MapKey | Arg::MapValue => {
                let key = h.args[i] == Arg::MapKey;
                let spec = map.and_then(|m| env.maps.get(m)).ok_or_else(|| arg_err("map_ptr first"))?;
                let size = u64::from(if key { spec.key_size } else { spec.value_size });
                let expected =
                    if key { "fp, pkt or map_value (map key)" } else { "fp, pkt or map_value (map value)" };
                check_mem(env, st, h, regno, &reg, size, Access::Read, expected)?;
            }
            Arg::Scalar => {
                if reg.kind != Kind::Scalar {
                    return Err(arg_err("scalar"));
                }
            }
            Arg::MemRead | Arg::MemReadOrNull | Arg::MemReadWrite | Arg::MemWrite => {
                let size_regno = regno + 1;
                let size_reg = arg_reg(st, size_regno)?;
                let size_err = |expected| ErrorKind::HelperArg {
                    helper: h.name,
                    arg: size_regno,
                    expected,
                    found: size_reg.ty(),
                };
                let zero_ok = h.args.get(i + 1) == Some(&Arg::SizeOrZero);
                if size_reg.kind != Kind::Scalar {
                    return Err(size_err("scalar size"));
                }
                let s = size_reg.var;
                if s.smin < 0 {
                    return Err(size_err("non-negative size"));
                }
                if s.umin == 0 && !zero_ok {
                    return Err(size_err("size of at least 1"));
                }
                if s.umax >= MAX_VAR_SIZE {
                    return Err(size_err("bounded size"));
                }
                // Which memory is accessed, and whether NULL is allowed, depends on the size.
                env.need_precise(st, 1 << size_regno);
                if h.args[i] == Arg::MemReadOrNull && reg.is_null() {
                    env.need_precise(st, 1 << regno);
                    if s.umax != 0 {
                        return Err(arg_err("memory (NULL only with size 0)"));
                    }
                } else {
                    let access = if h.args[i] == Arg::MemWrite { Access::Write } else { Access::Read };
                    let expected = "fp, pkt or map_value (memory)";
                    let stack_start = check_mem(env, st, h, regno, &reg, s.umax, access, expected)?;
                    // A helper that reads and writes rewrites every byte; one that only
                    // writes surely writes the minimum size.
                    let min = match h.args[i] {
                        Arg::MemReadWrite => Some(s.umax),
                        Arg::MemWrite => Some(s.umin),
                        _ => None,
                    };
                    if let (Some(start), Some(min)) = (stack_start, min) {
                        writes.push(StackWrite { start, min: min as usize, max: s.umax as usize });
                    }
                }
                i += 2;
                continue;
            }
            // Checked together with the memory argument before them.
            Arg::Size | Arg::SizeOrZero => {}
        }
        i += 1;
    }

    for w in writes {
        st.stack.write(w.start, w.min, Byte::Misc);
        st.stack.clobber(w.start + w.min, w.max - w.min);
    }
    if h.changes_pkt_data {
        for reg in st.all_regs_mut() {
            if matches!(reg.kind, Kind::Packet | Kind::PacketMeta | Kind::PacketEnd) {
                *reg = RegState::unknown();
            }
        }
    }
    for r in &mut st.regs[1..=5] {
        *r = RegState::NOT_INIT;
    }
    let range = |lo: i64, hi: i64| RegState::scalar(Scalar { smin: lo, smax: hi, ..Scalar::UNKNOWN }.sync());
    st.regs[0] = match h.ret {
        Ret::Integer => RegState::unknown(),
        Ret::Range(lo, hi) => range(lo, hi),
        Ret::Redirect => match env.kind {
            // XDP_ABORTED or XDP_REDIRECT; TC_ACT_SHOT or TC_ACT_REDIRECT.
            ProgKind::Xdp => range(0, 4),
            ProgKind::SchedCls => range(2, 7),
            ProgKind::SockOps | ProgKind::SkMsg | ProgKind::CgroupSockAddr(_) => RegState::unknown(),
        },
        Ret::MapValueOrNull => match map {
            Some(m) => RegState { id: env.fresh_id(), ..RegState::pointer(Kind::MapValueOrNull(m), 0) },
            None => RegState::unknown(),
        },
        Ret::Void => RegState::NOT_INIT,
    };
    Ok(())
}

/// Argument register `regno` (1..=5), which must be initialized.
fn arg_reg(st: &State, regno: u8) -> Result<RegState, ErrorKind> {
    match st.regs.get(usize::from(regno)) {
        Some(r) if r.kind != Kind::NotInit => Ok(*r),
        _ => Err(ErrorKind::UninitRegister { reg: regno }),
    }
}

/// `check_helper_mem_access`: `[reg, reg + size)` is accessible memory (initialized, for
/// reads). For stack memory, the byte index where it starts.
#[allow(clippy::too_many_arguments)]
fn check_mem(
    env: &mut Env,
    st: &State,
    h: &Helper,
    regno: u8,
    reg: &RegState,
    size: u64,
    access: Access,
    expected: &'static str,
) -> Result<Option<usize>, ErrorKind> {
    match reg.kind {
        Kind::Stack => {
            if size == 0 {
                return Ok(None);
            }
            let start = mem::stack_addr(env, reg, regno, 0, size)?;
            if access == Access::Read {
                mem::check_stack_readable(st, start, size)?;
            }
            Ok(Some(start))
        }
        Kind::Packet | Kind::PacketMeta if h.pkt_access => {
            mem::check_packet(env, reg, regno, 0, size, access).map(|_| None)
        }
        Kind::MapValue(m) => mem::check_map_value(env, reg, regno, m, 0, size, access).map(|_| None),
        _ => Err(ErrorKind::HelperArg { helper: h.name, arg: regno, expected, found: reg.ty() }),
    }
}
