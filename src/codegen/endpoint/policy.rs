//! The endpoint program's policy decision: the `pol_table` slot and the LPM trie.

use super::*;

impl Gen {
    /// The policy decision for a new connection; r0 = the peer's identity (host order).
    ///
    /// First the inlined cuckoo table `pol_table`: the slot of (endpoint, direction, peer
    /// identity), or failing that of identity 0, holds the rules most specific first; the
    /// first that matches decides (see [`crate::maps::policy::pol_slot`]). A slot with too
    /// many rules says so and the `policy` trie decides instead.
    pub(super) fn emit_policy(&self, b: &mut Builder, f: Fam, dir: u8) {
        let fl = self.fl(f);
        let [pol_found, policy_trie, policy_found] =
            ["pol_found", "policy_trie", "policy_found"].map(|n| b.new_label(&f.name(n)));
        b.place(fl.policy_key).comment("policy: r6 = the peer's identity; r8 = base bucket, r9 = shift");
        b.store(Size::W, Reg::R10, FP_PEER, Reg::R0);
        b.mov(Reg::R6, Reg::R0);
        b.ld_map_value(Reg::R1, map::POL_META, 0);
        b.load(Size::W, Reg::R9, Reg::R1, 0);
        b.mov32(Reg::R8, Reg::R9).alu32(AluOp::Rsh, Reg::R8, 8);
        b.alu32(AluOp::And, Reg::R9, 0xff);
        for pass in 0..2 {
            if pass == 1 {
                b.comment("no slot of its own: the any-identity rules");
                b.mov(Reg::R6, 0);
            }
            match self.ep {
                Some(ep) => {
                    let fold = pol_fold_const(ep, dir) as i32;
                    b.mov32(Reg::R7, Reg::R6).alu32(AluOp::Xor, Reg::R7, fold).param(param::POLICY_FOLD);
                }
                None => {
                    // pol_fold_const(ep, dir) = (ep << 17) ^ pol_fold_const(0, dir)
                    b.load(Size::H, Reg::R7, Reg::R10, FP_EV_EP).alu32(AluOp::Lsh, Reg::R7, 17);
                    b.alu32(AluOp::Xor, Reg::R7, pol_fold_const(0, dir) as i32);
                    b.alu32(AluOp::Xor, Reg::R7, Reg::R6);
                }
            }
            for (h, mul) in V6_HASH_MUL.into_iter().enumerate() {
                let next_bucket = b.new_label(&f.name(&format!("pol_bucket_{pass}_{h}")));
                b.mov32(Reg::R1, Reg::R7).alu32(AluOp::Mul, Reg::R1, mul as i32);
                b.alu32(AluOp::Rsh, Reg::R1, Reg::R9).alu32(AluOp::Add, Reg::R1, Reg::R8);
                b.store(Size::W, Reg::R10, FP_KEY, Reg::R1);
                kit::map_lookup(b, map::POL_TABLE, FP_KEY);
                b.jmp(JmpCond::Eq, Reg::R0, 0, next_bucket);
                if self.ep.is_none() {
                    // pol_epdir(ep, dir) = ep | pol_epdir(0, dir), once per bucket: the slot
                    // loop leaves r2 alone.
                    b.load(Size::H, Reg::R2, Reg::R10, FP_EV_EP);
                    b.alu32(AluOp::Or, Reg::R2, pol_epdir(0, dir) as i32);
                }
                for s in 0..POL_SLOTS {
                    let at = (s * pol_slot::SIZE) as i16;
                    let next = b.new_label(&f.name(&format!("pol_slot_{pass}_{h}_{s}")));
                    b.load(Size::W, Reg::R1, Reg::R0, at + pol_slot::IDENTITY as i16);
                    b.jmp(JmpCond::Ne, Reg::R1, Reg::R6, next);
                    b.load(Size::W, Reg::R1, Reg::R0, at + pol_slot::EPDIR as i16);
                    match self.ep {
                        Some(ep) => {
                            let epdir = pol_epdir(ep, dir) as i32;
                            b.jmp32(JmpCond::Ne, Reg::R1, epdir, next).param(param::POLICY_EPDIR);
                        }
                        None => {
                            b.jmp32(JmpCond::Ne, Reg::R1, Reg::R2, next);
                        }
                    }
                    if at != 0 {
                        b.add(Reg::R0, i32::from(at));
                    }
                    b.ja(pol_found);
                    b.place(next);
                }
                b.place(next_bucket);
            }
        }
        b.ja(self.site(Reason::DenyDefault));

        b.place(pol_found).comment("r0 = the slot; r1 = rules inline, r3 = protocol, r4 = port");
        b.load(Size::W, Reg::R1, Reg::R0, pol_slot::STATE as i16);
        b.jmp(JmpCond::Set, Reg::R1, POL_OVERFLOW as i32, policy_trie);
        b.load(Size::B, Reg::R3, Reg::R10, FP_FAM + 1);
        b.load(Size::H, Reg::R4, Reg::R10, FP_MISC + 2);
        b.be(16, Reg::R4);
        for i in 0..POL_LIST {
            let at = (pol_slot::ENTRIES + i * pol_slot::ENTRY_SIZE) as i16;
            let next = b.new_label(&f.name(&format!("pol_rule_{}", i + 1)));
            let port = b.new_label(&f.name(&format!("pol_port_{i}")));
            b.jmp(JmpCond::Le, Reg::R1, i as i32, self.site(Reason::DenyDefault));
            b.load(Size::B, Reg::R2, Reg::R0, at + pol_slot::PROTO as i16);
            b.jmp(JmpCond::Eq, Reg::R2, 0, port);
            b.jmp(JmpCond::Ne, Reg::R2, Reg::R3, next);
            b.place(port);
            b.load(Size::H, Reg::R2, Reg::R0, at + pol_slot::PORT as i16);
            b.alu(AluOp::Xor, Reg::R2, Reg::R4);
            b.load(Size::H, Reg::R5, Reg::R0, at + pol_slot::MASK as i16);
            b.alu(AluOp::And, Reg::R2, Reg::R5);
            b.jmp(JmpCond::Ne, Reg::R2, 0, next);
            b.load(Size::B, Reg::R2, Reg::R0, at + pol_slot::VERDICT as i16);
            b.jmp(JmpCond::Eq, Reg::R2, i32::from(policy_value::DENY), self.site(Reason::DenyPolicy));
            l7_redirect::emit_entry_check(b, Reg::R0, at + pol_slot::PROXY_PORT as i16, self.l7_labels(f));
            b.mov(Reg::R7, Reason::AllowNew as i32);
            b.ja(fl.ct_create);
            b.place(next);
        }
        b.ja(self.site(Reason::DenyDefault));

        b.place(policy_trie)
            .comment("too many rules inline: the policy trie {96, ep, dir, identity, proto, port}");
        b.load(Size::W, Reg::R0, Reg::R10, FP_PEER);
        b.be(32, Reg::R0);
        b.store(Size::W, Reg::R10, FP_POL + policy_key::PREFIXLEN as i16, policy_key::FULL_BITS as i32);
        match self.ep {
            Some(ep) => {
                b.store(Size::H, Reg::R10, FP_POL + policy_key::EP as i16, i32::from(ep.swap_bytes()))
                    .param(param::ENDPOINT_BE16);
            }
            None => {
                b.load(Size::H, Reg::R1, Reg::R10, FP_EV_EP).be(16, Reg::R1);
                b.store(Size::H, Reg::R10, FP_POL + policy_key::EP as i16, Reg::R1);
            }
        }
        b.store(Size::H, Reg::R10, FP_POL + policy_key::DIR as i16, i32::from(dir));
        b.store(Size::W, Reg::R10, FP_POL + policy_key::IDENTITY as i16, Reg::R0);
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        b.store(Size::H, Reg::R10, FP_POL + policy_key::PROTO as i16, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R10, FP_MISC + 2);
        b.store(Size::H, Reg::R10, FP_POL + policy_key::PORT as i16, Reg::R1);
        kit::policy_trie_lookup(b, FP_POL, policy_found);
        b.ja(self.site(Reason::DenyDefault));
        b.place(policy_found);
        b.load(Size::B, Reg::R1, Reg::R0, policy_value::VERDICT as i16);
        b.jmp(JmpCond::Eq, Reg::R1, i32::from(policy_value::DENY), self.site(Reason::DenyPolicy));
        b.jmp(JmpCond::Ne, Reg::R1, i32::from(policy_value::ALLOW), self.site(Reason::DenyDefault));
        l7_redirect::emit_entry_check(b, Reg::R0, policy_value::PROXY_PORT as i16, self.l7_labels(f));
        b.mov(Reg::R7, Reason::AllowNew as i32);
        b.ja(fl.ct_create);
    }
}
