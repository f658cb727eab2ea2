//! A program the kernel verifier rejects is reported with the end of the verifier's log and
//! our listing around the instruction where it stopped (the nearest label, comments, a few
//! instructions either side), not the whole listing.

use sluice::node::load::{load_program, LoadError};
use sluice::node::Object;
use sluice::sys::{self, Syscall};
use sluice_asm::{Builder, Reg, Size};
use sluice_verifier_sim::spec::ProgKind;
use std::collections::BTreeMap;
use std::sync::Arc;

#[test]
fn a_kernel_rejection_shows_the_failing_instruction_in_context() {
    if !sys::require_kernel("a_kernel_rejection_shows_the_failing_instruction_in_context") {
        return;
    }
    let mut b = Builder::new();
    let (entry, bad) = (b.new_label("entry"), b.new_label("bad"));
    b.place(entry).mov(Reg::R0, 0);
    for i in 0..30 {
        b.add(Reg::R0, i);
    }
    b.place(bad).comment("reads through a scalar: the verifier stops here");
    b.load(Size::W, Reg::R1, Reg::R0, 0);
    for _ in 0..30 {
        b.mov(Reg::R0, 2);
    }
    b.exit();
    let obj = Object {
        name: "reject_ctx".into(),
        kind: ProgKind::Xdp,
        program: b.build().expect("builds"),
        maps: vec![],
        writes: vec![],
    };
    let sys: Arc<dyn Syscall> = sys::kernel();
    let err =
        load_program(&sys, &obj, &BTreeMap::new()).expect_err("the kernel rejects a scalar dereference");
    let LoadError::Rejected { listing, log, .. } = &err else { panic!("not a rejection: {err}") };
    assert!(log.contains("R0 invalid mem access"), "the log's end says why: {log}");
    assert!(
        listing.contains(">   31: r1 = *(u32 *)(r0 +0)"),
        "the failing instruction is marked:\n{listing}"
    );
    assert!(listing.contains("; reads through a scalar"), "its comment is shown:\n{listing}");
    assert!(!listing.contains("   1: r0 += 0"), "far instructions are left out:\n{listing}");
    assert!(listing.lines().count() < 20, "an excerpt, not the listing:\n{listing}");
}
