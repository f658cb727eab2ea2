//! The endpoint program's conntrack: the lookup, a hit (established and reply packets), a
//! new connection's way to policy, and the entry a new connection creates.

use super::*;

impl Gen {
    pub(super) fn emit_conntrack(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        b.place(fl.conntrack).comment("conntrack: the tuple as sent");
        if !self.options.conntrack {
            b.ja(fl.new_connection);
        }
        kit::map_lookup(b, f.ct, FP_CT);
        b.mov(Reg::R8, 0);
        b.jmp(JmpCond::Ne, Reg::R0, 0, fl.ct_hit);
        b.comment("a bare TCP SYN opens a connection: it is never a reply");
        b.load(Size::B, Reg::R1, Reg::R10, FP_MISC).alu(AluOp::And, Reg::R1, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Eq, Reg::R1, TCP_SYN, fl.new_connection);
        b.comment("... and reversed, in the opposite direction: a reply");
        copy_stack(b, FP_CT + f.daddr, FP_CTR, f.alen);
        copy_stack(b, FP_CT, FP_CTR + f.daddr, f.alen);
        b.load(Size::H, Reg::R1, Reg::R10, FP_CT + f.dport).store(
            Size::H,
            Reg::R10,
            FP_CTR + f.sport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R10, FP_CT + f.sport).store(
            Size::H,
            Reg::R10,
            FP_CTR + f.dport,
            Reg::R1,
        );
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.proto).store(
            Size::W,
            Reg::R10,
            FP_CTR + f.proto,
            Reg::R1,
        );
        b.store(Size::B, Reg::R10, FP_CTR + f.dir, i32::from(self.opposite_dir()));
        kit::map_lookup(b, f.ct, FP_CTR);
        b.mov(Reg::R8, 1);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fl.new_connection);
    }

    /// A live entry (r0; r8 = 1 for a reply) advances; a dead one is a miss.
    pub(super) fn emit_ct_hit(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        let [ct_dead, ct_state, ct_open, ct_closing, ct_closing_keep, ct_keep_state, ct_established] = [
            "ct_dead",
            "ct_state",
            "ct_open",
            "ct_closing",
            "ct_closing_keep",
            "ct_keep_state",
            "ct_established",
        ]
        .map(|n| b.new_label(&f.name(n)));
        let [ct_open_icmp, ct_store, ct_state_kept] =
            ["ct_open_icmp", "ct_store", "ct_state_kept"].map(|n| b.new_label(&f.name(n)));
        b.place(fl.ct_hit).comment("r6 = the entry, r8 = 1 for a reply; a dead entry is a miss");
        b.mov(Reg::R6, Reg::R0);
        b.call(KTIME_GET_COARSE_NS);
        b.mov(Reg::R9, Reg::R0);
        b.load(Size::DW, Reg::R1, Reg::R6, ct_value::EXPIRES as i16);
        b.jmp(JmpCond::Gt, Reg::R9, Reg::R1, ct_dead);
        b.comment("the reply flag and the state are written only when they change (a write makes");
        b.comment("every other CPU's copy of the entry's cache line stale): the reply flag once");
        b.jmp(JmpCond::Eq, Reg::R8, 0, ct_state);
        b.load(Size::B, Reg::R1, Reg::R6, ct_value::FLAGS as i16);
        b.jmp(JmpCond::Set, Reg::R1, i32::from(ct_value::SEEN_REPLY), ct_state);
        b.alu(AluOp::Or, Reg::R1, i32::from(ct_value::SEEN_REPLY));
        b.store(Size::B, Reg::R6, ct_value::FLAGS as i16, Reg::R1);
        b.place(ct_state).comment("advance the state; r1 = new state (r5 = old), r2 = its lifetime");
        b.load(Size::B, Reg::R3, Reg::R10, FP_MISC);
        b.load(Size::B, Reg::R1, Reg::R6, ct_value::STATE as i16);
        b.mov(Reg::R5, Reg::R1);
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Open as i32, ct_open);
        b.jmp(JmpCond::Set, Reg::R3, TCP_FIN | TCP_RST, ct_closing);
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Closing as i32, ct_closing_keep);
        b.mov(Reg::R2, Reg::R3).alu(AluOp::And, Reg::R2, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Ne, Reg::R2, TCP_SYN | TCP_ACK, ct_keep_state);
        b.jmp(JmpCond::Eq, Reg::R8, 0, ct_keep_state);
        b.mov(Reg::R1, CtState::Established as i32);
        b.place(ct_keep_state);
        b.jmp(JmpCond::Eq, Reg::R1, CtState::Established as i32, ct_established);
        b.ld_imm64(Reg::R2, timeout::TCP_SYN).ja(ct_store);
        b.place(ct_established);
        b.ld_imm64(Reg::R2, timeout::TCP_ESTABLISHED).ja(ct_store);
        b.place(ct_closing);
        b.mov(Reg::R1, CtState::Closing as i32);
        b.place(ct_closing_keep);
        b.ld_imm64(Reg::R2, timeout::TCP_CLOSING).ja(ct_store);
        b.place(ct_open);
        b.ld_imm64(Reg::R2, timeout::UDP);
        b.load(Size::B, Reg::R4, Reg::R10, FP_FAM + 1);
        b.jmp(JmpCond::Eq, Reg::R4, IPPROTO_ICMP, ct_open_icmp);
        b.jmp(JmpCond::Ne, Reg::R4, IPPROTO_ICMPV6, ct_store);
        b.place(ct_open_icmp);
        b.ld_imm64(Reg::R2, timeout::ICMP);
        b.place(ct_store).comment("the state, if it changed");
        b.jmp(JmpCond::Eq, Reg::R1, Reg::R5, ct_state_kept);
        b.store(Size::B, Reg::R6, ct_value::STATE as i16, Reg::R1);
        b.place(ct_state_kept).comment("the expiry: the lifetime from now");
        b.add(Reg::R2, Reg::R9);
        b.store(Size::DW, Reg::R6, ct_value::EXPIRES as i16, Reg::R2);
        b.comment("count the packet: a plain add (the locked add cost 4 ns a packet, BENCHMARKS.md);");
        b.comment("two CPUs adding at the same instant may lose one; nothing reads it as exact");
        b.load(Size::DW, Reg::R1, Reg::R6, ct_value::PACKETS as i16);
        b.add(Reg::R1, 1).store(Size::DW, Reg::R6, ct_value::PACKETS as i16, Reg::R1);
        if self.dir == Direction::FromEndpoint {
            l7_redirect::emit_established_check(b, Reg::R6, self.l7_labels(f));
        }
        b.mov(Reg::R7, Reason::AllowEstablished as i32).ja(fl.allowed);
        b.place(ct_dead).comment("a dead entry: judge the packet as new");
        b.ja(fl.new_connection);
    }

    pub(super) fn emit_new_connection(&self, b: &mut Builder, f: Fam) {
        let dir = self.dir.policy_dir();
        let fl = self.fl(f);
        b.place(fl.new_connection).comment("a new connection: is policy enforced here?");
        if self.dir == Direction::ToEndpoint {
            l7_redirect::emit_note_upstream(b, &L7);
        }
        self.emit_ep_config(b);
        b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenyDefault));
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::IDENTITY as i16);
        b.store(Size::W, Reg::R10, FP_MISC + 4, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::FLAGS as i16);
        b.alu(AluOp::And, Reg::R1, self.enforced_bit());
        b.mov(Reg::R7, Reason::AllowUnenforced as i32);
        b.jmp(JmpCond::Eq, Reg::R1, 0, fl.ct_create);

        let peer = match self.dir {
            Direction::FromEndpoint => FP_CT + f.daddr,
            Direction::ToEndpoint => FP_CT,
        };
        let identity = b.new_label(&f.name("identity"));
        if self.dir == Direction::ToEndpoint {
            b.comment(
                "identity on the wire: a mark from-overlay left (cluster mode) comes before the ipcache",
            );
            b.load(Size::DW, Reg::R1, Reg::R10, FP_CTX);
            b.load(Size::W, Reg::R1, Reg::R1, overlay::SKB_MARK);
            b.mov32(Reg::R2, Reg::R1).alu32(AluOp::And, Reg::R2, overlay::MARK_MAGIC_MASK as i32);
            let ipcache = b.new_label(&f.name("ipcache"));
            b.jmp(JmpCond::Ne, Reg::R2, overlay::MARK_MAGIC_IDENTITY as i32, ipcache);
            b.mov32(Reg::R0, Reg::R1).alu32(AluOp::Rsh, Reg::R0, 16);
            b.ja(identity);
            b.place(ipcache);
        }
        if f.family == 4 {
            b.comment("the peer's identity: ipcache level 1 (direct), 2 and 3");
            b.load(Size::W, Reg::R6, Reg::R10, peer);
            b.be(32, Reg::R6);
            b.mov32(Reg::R2, Reg::R6).alu32(AluOp::Rsh, Reg::R2, 16).alu(AluOp::Lsh, Reg::R2, 2);
            b.ld_map_value(Reg::R1, map::IPC_V4_L1, 0);
            b.add(Reg::R1, Reg::R2);
            b.load(Size::W, Reg::R0, Reg::R1, 0);
            for (level, shift) in [(map::IPC_V4_L2, 8), (map::IPC_V4_L3, 0)] {
                let lookup = b.new_label(&format!("{level}_lookup"));
                b.jmp(JmpCond::Set, Reg::R0, IPC_CHILD as i32, lookup);
                b.ja(identity);
                b.place(lookup);
                b.alu32(AluOp::And, Reg::R0, !IPC_CHILD as i32);
                b.store(Size::W, Reg::R10, FP_KEY, Reg::R0);
                kit::map_lookup(b, level, FP_KEY);
                b.jmp(JmpCond::Eq, Reg::R0, 0, identity);
                b.mov32(Reg::R2, Reg::R6);
                if shift != 0 {
                    b.alu32(AluOp::Rsh, Reg::R2, shift);
                }
                b.alu32(AluOp::And, Reg::R2, 0xff).alu(AluOp::Lsh, Reg::R2, 2);
                b.add(Reg::R0, Reg::R2);
                b.load(Size::W, Reg::R0, Reg::R0, 0);
            }
        } else {
            b.comment("the peer's identity: the ipc_v6 trie");
            b.store(Size::W, Reg::R10, FP_LPM, 128);
            copy_stack(b, peer, FP_LPM + 4, 16);
            kit::map_lookup(b, map::IPC_V6, FP_LPM);
            b.jmp(JmpCond::Eq, Reg::R0, 0, identity);
            b.load(Size::W, Reg::R0, Reg::R0, 0);
        }
        b.place(identity).comment("r0 = identity (0: world)");
        b.jmp(JmpCond::Ne, Reg::R0, 0, fl.policy_key);
        b.mov(Reg::R0, WORLD as i32);
        self.emit_policy(b, f, dir);
    }

    /// Track the allowed connection (r7 = the allow reason) in the family's map, and leave a
    /// first fragment's verdict for the rest.
    pub(super) fn emit_ct_create(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        let (store, allowed_reason) =
            (b.new_label(&f.name("ct_create_store")), b.new_label(&f.name("allowed_reason")));
        b.place(fl.ct_create).comment("track the connection; r7 = the allow reason");
        if !self.options.conntrack {
            b.ja(fl.allowed);
        }
        for off in (0..ct_value::SIZE as i16).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_CTV + off, 0);
        }
        l7_redirect::emit_ct_flags(b, &L7);
        b.call(KTIME_GET_COARSE_NS);
        b.load(Size::B, Reg::R3, Reg::R10, FP_FAM + 1);
        b.ld_imm64(Reg::R2, timeout::UDP);
        b.mov(Reg::R1, CtState::Open as i32);
        b.jmp(JmpCond::Ne, Reg::R3, IPPROTO_TCP, store);
        b.load(Size::B, Reg::R3, Reg::R10, FP_MISC);
        b.ld_imm64(Reg::R2, timeout::TCP_ESTABLISHED);
        b.mov(Reg::R1, CtState::Established as i32);
        b.alu(AluOp::And, Reg::R3, TCP_SYN | TCP_ACK);
        b.jmp(JmpCond::Ne, Reg::R3, TCP_SYN, store);
        b.ld_imm64(Reg::R2, timeout::TCP_SYN);
        b.mov(Reg::R1, CtState::SynSent as i32);
        b.place(store);
        b.add(Reg::R0, Reg::R2);
        b.store(Size::DW, Reg::R10, FP_CTV + ct_value::EXPIRES as i16, Reg::R0);
        b.store(Size::B, Reg::R10, FP_CTV + ct_value::STATE as i16, Reg::R1);
        b.store(Size::DW, Reg::R10, FP_CTV + ct_value::PACKETS as i16, 1);
        kit::map_update(b, f.ct, FP_CT, FP_CTV, kit::BPF_ANY);
        b.place(fl.allowed).comment("a first fragment leaves its verdict for the rest; r7 = reason");
        b.load(Size::B, Reg::R1, Reg::R10, FP_MISC + 1);
        b.jmp(JmpCond::Eq, Reg::R1, 0, allowed_reason);
        b.call(KTIME_GET_COARSE_NS);
        b.alu(AluOp::Rsh, Reg::R0, FRAG_CLOCK_SHIFT).add(Reg::R0, FRAG_TIMEOUT_UNITS);
        b.store(Size::W, Reg::R10, FP_CTV + frag_value::EXPIRES as i16, Reg::R0);
        b.store(Size::W, Reg::R10, FP_CTV + frag_value::VERDICT as i16, 1);
        kit::map_update(b, f.frag, FP_FRAG, FP_CTV, kit::BPF_ANY);
        b.place(allowed_reason);
        b.jmp(JmpCond::Eq, Reg::R7, Reason::AllowUnenforced as i32, self.site(Reason::AllowUnenforced));
        b.jmp(JmpCond::Eq, Reg::R7, Reason::AllowEstablished as i32, self.site(Reason::AllowEstablished));
        b.ja(self.site(Reason::AllowNew));
    }
}
