//! The endpoint program's service step: the load balancer inside the endpoint programs,
//! hairpin and reverse NAT.

use super::*;

impl Gen {
    /// Services, after the ports (r7 = L3, r8 = L4 header): if the whole L4 header is there,
    /// `from-endpoint` goes on into the load balancer's forward path (the frame's inputs
    /// set here), `to-endpoint` keeps the header offsets for the reply path at
    /// its exit. Otherwise (or with the L4 header deeper than the load balancer's 255-byte
    /// bound: many IPv6 extension headers) the packet goes on untranslated.
    pub(super) fn emit_lb_step(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        let skip = fl.conntrack;
        b.place(fl.lb).comment("services: is the whole L4 header there? (tcp 20, udp 8, sctp 12)");
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        kit::l4_whole_header(b, Reg::R1, Reg::R8, skip, None, &f.name("lb_"));
        emit_lb_offsets(b);
        b.jmp(JmpCond::Gt, Reg::R4, 255, skip);
        match self.dir {
            Direction::ToEndpoint => {
                b.store(Size::W, Reg::R10, FP_LB_OFFS, Reg::R3);
                b.store(Size::W, Reg::R10, FP_LB_OFFS + 4, Reg::R4);
                b.ja(skip);
            }
            Direction::FromEndpoint => {
                // The frontend filter runs inside the load balancer (its own check): an
                // early filter here saved a few stores per non-service packet but cost the
                // verifier a third more states on this program (node start time).
                b.store(Size::W, Reg::R10, LB.base + LbFrame::L3, Reg::R3);
                b.store(Size::W, Reg::R10, LB.base + LbFrame::L4, Reg::R4);
                b.store(Size::DW, Reg::R10, LB.base + LbFrame::CTX, Reg::R1);
                self.emit_lb_tuple(b, f);
                let (reply, forward) = (fl.lb_hairpin_reply, b.new_label(&f.name("lb_forward")));
                b.comment(
                    "services: to the hairpin address? the endpoint answers its own hairpinned connection",
                );
                self.emit_to_hairpin(b, f, reply, forward);
            }
        }
    }

    /// Jump to `yes` if the tuple's destination is the hairpin address of family `f`, else
    /// go on at label `no` (placed here).
    pub(super) fn emit_to_hairpin(&self, b: &mut Builder, f: Fam, yes: Label, no: Label) {
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.daddr);
            b.jmp32(JmpCond::Eq, Reg::R1, addr_word(&HAIRPIN_V4.octets(), 0), yes);
        } else {
            for w in 0..4 {
                b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.daddr + 4 * w as i16);
                b.jmp32(JmpCond::Ne, Reg::R1, addr_word(&HAIRPIN_V6.octets(), w), no);
            }
            b.ja(yes);
        }
        b.place(no);
    }

    /// The `lb_hint` form of the address of family `f` at stack offset `at` of the tuple.
    pub(super) fn hint_addr(&self, f: Fam, at: i16) -> HintAddr {
        if f.family == 4 {
            HintAddr::V4(at)
        } else {
            HintAddr::Mapped(at)
        }
    }

    /// Store the hairpin address of family `f` (as the packet carries it) at `at`.
    pub(super) fn emit_store_hairpin(&self, b: &mut Builder, f: Fam, at: i16) {
        let octets: Vec<u8> =
            if f.family == 4 { HAIRPIN_V4.octets().to_vec() } else { HAIRPIN_V6.octets().to_vec() };
        for w in 0..octets.len() / 4 {
            b.store(Size::W, Reg::R10, at + 4 * w as i16, addr_word(&octets, w));
        }
    }

    /// The load balancer's tuple (IPv4-mapped addresses) and family from the conntrack
    /// key `FP_CT` of family `f`. The context must already be in the frame: the tuple
    /// overlays `FP_CTX`.
    pub(super) fn emit_lb_tuple(&self, b: &mut Builder, f: Fam) {
        use crate::maps::lb::ct_key as lb_key;
        let t = |off: usize| LB.base + LbFrame::TUPLE + off as i16;
        b.comment("services: the load balancer's tuple from the conntrack key");
        b.store(Size::DW, Reg::R10, t(lb_key::SPORT), 0);
        if f.family == 4 {
            for (field, from) in [(lb_key::SADDR, FP_CT), (lb_key::DADDR, FP_CT + f.daddr)] {
                b.store(Size::DW, Reg::R10, t(field), 0);
                b.store(Size::W, Reg::R10, t(field) + 8, V4_MAPPED_WORD as i32);
                b.load(Size::W, Reg::R1, Reg::R10, from).store(Size::W, Reg::R10, t(field) + 12, Reg::R1);
            }
        } else {
            copy_stack(b, FP_CT, t(lb_key::SADDR), 32);
        }
        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.sport).store(
            Size::W,
            Reg::R10,
            t(lb_key::SPORT),
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1).store(Size::B, Reg::R10, t(lb_key::PROTO), Reg::R1);
        b.store(Size::B, Reg::R10, LB.base + LbFrame::FAMILY, f.family);
    }

    /// Count the load balancer's reason (r6) in `lb_stats`; keeps r6 and r7.
    pub(super) fn emit_lb_count(&self, b: &mut Builder, tag: &str) {
        let done = b.new_label(&format!("services_{tag}_counted"));
        b.comment("services: count the load balancer's reason (r6) in lb_stats");
        kit::counter_add_then(b, map::LB_STATS, FP_KEY, Reg::R6, None, done);
    }

    /// `from-endpoint`: one call of the load balancer on `paths`, then what both call sites
    /// do with its result: count the reason in `lb_stats`; a drop or a reset ends the
    /// program; otherwise the context goes back in its slot, the peer identity is zeroed
    /// again (the frame overlaid both), and an untouched packet (`pass_no_service`) goes on
    /// to conntrack. `names`: the label prefix, the exit label, the count tag and the
    /// resume label, each made unique per family.
    pub(super) fn emit_lb_call(&self, b: &mut Builder, f: Fam, paths: LbPaths, names: [&str; 4]) {
        let [prefix, done, tag, ok] = names.map(|n| f.name(n));
        let (done, ok) = (b.new_label(&done), b.new_label(&ok));
        // The forward path checks its own frontend filter (see emit_lb_step).
        let filtered = false;
        let options = LbOptions { conntrack: true, paths, reset: ResetVia::Peer, filtered };
        emit_service_lb(b, LB, LbLabels { prefix: &prefix, exit: done }, options);
        b.place(done);
        self.emit_lb_count(b, &tag);
        b.jmp(JmpCond::Eq, Reg::R7, TC_ACT_OK, ok);
        b.mov(Reg::R0, Reg::R7).exit();
        b.place(ok).comment("services: the context back in its slot; no peer yet");
        b.load(Size::DW, Reg::R1, Reg::R10, LB.base + LbFrame::CTX).store(
            Size::DW,
            Reg::R10,
            FP_CTX,
            Reg::R1,
        );
        b.store(Size::W, Reg::R10, FP_PEER, 0);
        b.jmp(JmpCond::Eq, Reg::R6, crate::maps::lb::LbReason::PassNoService as i32, self.fl(f).conntrack);
    }

    /// `from-endpoint`: the load balancer's forward path (DNAT), one copy per family (so
    /// that what follows it needs no branch on the family, which the kernel verifier cannot
    /// follow through the stack). A drop or a reset (redirected into the client's side of
    /// the veth: it must not meet the client's own ingress policy, which has no connection
    /// for it) ends the program, counted in `lb_stats` only. A passed or translated packet
    /// goes on to conntrack and policy with the tuple's destination and the policy port set
    /// to the backend's (the packet itself is not read again: conntrack and policy work on
    /// the stack copy, forwarding reloads the packet pointers from the context).
    pub(super) fn emit_lb_forward(&self, b: &mut Builder, f: Fam) {
        let fl = self.fl(f);
        b.comment("services: the load balancer's forward path");
        self.emit_lb_call(b, f, LbPaths::ForwardOnly, ["svc_", "lb_done", "forward", "lb_ok"]);
        b.comment("services: translated: the tuple's destination and the policy port are the backend's");
        let new = LB.base + LbFrame::NEW;
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, new + 12).store(Size::W, Reg::R10, FP_CT + f.daddr, Reg::R1);
        } else {
            copy_stack(b, new, FP_CT + f.daddr, 16);
        }
        b.load(Size::H, Reg::R1, Reg::R10, new + 16);
        b.store(Size::H, Reg::R10, FP_CT + f.dport, Reg::R1);
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R1);
        b.comment("services: hairpin (the backend is the client): the source is the hairpin address");
        b.comment("now; the endpoint talks to itself: no conntrack, no policy, on to forwarding");
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, new + 12);
            b.load(Size::W, Reg::R2, Reg::R10, FP_CT);
            b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, fl.conntrack);
        } else {
            for half in [0i16, 8] {
                b.load(Size::DW, Reg::R1, Reg::R10, new + half);
                b.load(Size::DW, Reg::R2, Reg::R10, FP_CT + half);
                b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, fl.conntrack);
            }
        }
        self.emit_store_hairpin(b, f, FP_CT);
        b.ja(self.site(Reason::AllowHairpin));
    }

    /// `from-endpoint`, for a packet to the hairpin address of family `f`: the load
    /// balancer's hairpin reply path. A reverse-translated packet (frontend → the endpoint)
    /// skips conntrack and policy, as its connection's forward direction did; a miss goes
    /// on as any packet; a failed rewrite drops (counted in `lb_stats` only).
    pub(super) fn emit_lb_hairpin_reply(&self, b: &mut Builder, f: Fam) {
        b.place(self.fl(f).lb_hairpin_reply).comment("services: the load balancer's hairpin reply path");
        self.emit_lb_call(b, f, LbPaths::HairpinReply, ["svchp_", "lb_hp_done", "hairpin_reply", "lb_hp_ok"]);
        b.comment(
            "services: hairpin reply translated: the tuple is the frontend → the endpoint; on to forwarding",
        );
        copy_stack(b, FP_CT, FP_CT + f.daddr, f.alen);
        let new = LB.base + LbFrame::NEW;
        if f.family == 4 {
            b.load(Size::W, Reg::R1, Reg::R10, new + 12).store(Size::W, Reg::R10, FP_CT, Reg::R1);
        } else {
            copy_stack(b, new, FP_CT, 16);
        }
        b.load(Size::H, Reg::R1, Reg::R10, new + 16);
        b.store(Size::H, Reg::R10, FP_CT + f.sport, Reg::R1);
        b.ja(self.site(Reason::AllowHairpin));
    }

    /// `to-endpoint`, at the exit of an allowed packet whose L4 header the parse recorded:
    /// the load balancer's reply path (reverse NAT: the backend's source back to the
    /// frontend), counted in `lb_stats`; its verdict is the program's.
    pub(super) fn emit_lb_reply(&self, b: &mut Builder) {
        let [filter_v6, reply_frame, reply_v6, reply, no_service, done] = [
            "services_filter_v6",
            "services_reply_frame",
            "services_reply_v6",
            "services_reply",
            "services_reply_no_service",
            "services_reply_done",
        ]
        .map(|n| b.new_label(n));
        b.comment("services: reverse NAT of an allowed packet with an L4 header");
        b.jmp(JmpCond::Ne, Reg::R7, TC_ACT_OK, self.l.return_verdict);
        b.load(Size::W, Reg::R1, Reg::R10, FP_LB_OFFS + 4);
        b.jmp(JmpCond::Eq, Reg::R1, 0, self.l.return_verdict);
        b.comment("services: the backend filter on the tuple before the frame is set up");
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
        b.jmp(JmpCond::Eq, Reg::R1, 6, filter_v6);
        for f in [V4, V6] {
            if f.family == 6 {
                b.place(filter_v6);
            }
            let (addr, port) = (self.hint_addr(f, FP_CT), FP_CT + f.sport);
            emit_hint_filter(b, Hint::Backend, addr, port, FP_FAM + 1, FP_KEY, no_service);
            b.ja(reply_frame);
        }
        b.place(reply_frame).comment("services: the load balancer's frame");
        b.load(Size::W, Reg::R1, Reg::R10, FP_LB_OFFS + 4);
        b.store(Size::W, Reg::R10, LB.base + LbFrame::L4, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R10, FP_LB_OFFS).store(
            Size::W,
            Reg::R10,
            LB.base + LbFrame::L3,
            Reg::R1,
        );
        b.load(Size::DW, Reg::R1, Reg::R10, FP_CTX).store(
            Size::DW,
            Reg::R10,
            LB.base + LbFrame::CTX,
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
        b.jmp(JmpCond::Eq, Reg::R1, 6, reply_v6);
        self.emit_lb_tuple(b, V4);
        b.ja(reply);
        b.place(reply_v6);
        self.emit_lb_tuple(b, V6);
        b.place(reply);
        let options =
            LbOptions { conntrack: true, paths: LbPaths::ReplyOnly, reset: ResetVia::Egress, filtered: true };
        emit_service_lb(b, LB, LbLabels { prefix: "svc_", exit: done }, options);
        b.place(no_service).comment("services: from no backend (its filter bit clear)");
        let pass = crate::maps::lb::LbReason::PassNoService;
        b.mov(Reg::R6, pass as i32).mov(Reg::R7, pass.verdict());
        b.place(done);
        self.emit_lb_count(b, "reply");
        b.mov(Reg::R0, Reg::R7).exit();
    }
}
