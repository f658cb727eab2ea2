//! The endpoint program's exit and forwarding: the verdict count and event, the FIB and
//! neighbour paths, the MAC rewrites.

use super::*;

impl Gen {
    pub(super) fn emit_exit(&self, b: &mut Builder) {
        let stride = Reason::COUNT as i32;
        let [event, event_drop, event_kind, event_budget, event_send] =
            ["event", "event_drop", "event_kind", "event_budget", "event_send"].map(|n| b.new_label(n));
        b.place(self.l.v.exit()).comment("count (endpoint, reason) in ep_stats; r6 = reason, r7 = verdict");
        match self.ep {
            Some(ep) => {
                b.mov(Reg::R1, Reg::R6).add(Reg::R1, i32::from(ep) * stride).param(param::STATS_ROW);
            }
            None => {
                b.load(Size::H, Reg::R1, Reg::R10, FP_EV_EP).alu(AluOp::Mul, Reg::R1, stride);
                b.add(Reg::R1, Reg::R6);
            }
        }
        kit::counter_add_then(b, map::EP_STATS, FP_KEY, Reg::R1, None, event);
        b.comment("an event for drops and new connections, if switched on");
        if self.options.services {
            b.comment("services: none for hairpin traffic (its reason sorts after the drops)");
            b.jmp(JmpCond::Eq, Reg::R6, Reason::AllowHairpin as i32, self.l.ret);
        }
        b.comment("(the reason first: most packets, established ones, can produce none)");
        b.jmp(JmpCond::Ge, Reg::R6, Reason::DenyPolicy as i32, event_drop);
        b.jmp(JmpCond::Ne, Reg::R6, Reason::AllowNew as i32, self.l.ret);
        b.mov(Reg::R3, 1).ja(event_kind);
        b.place(event_drop);
        b.mov(Reg::R3, 2);
        b.place(event_kind);
        b.ld_map_value(Reg::R1, map::EV_CONFIG, 0);
        b.load(Size::W, Reg::R2, Reg::R1, ev_config::FLAGS as i16);
        b.alu(AluOp::And, Reg::R2, Reg::R3);
        b.jmp(JmpCond::Eq, Reg::R2, 0, self.l.ret);
        b.store(Size::B, Reg::R10, FP_EV + event::KIND as i16, Reg::R3);
        b.comment("rate budget: ev_budget per CPU, a one-second window");
        b.load(Size::W, Reg::R8, Reg::R1, ev_config::RATE as i16);
        b.store(Size::W, Reg::R10, FP_KEY, 0);
        kit::map_lookup(b, map::EV_BUDGET, FP_KEY);
        b.jmp(JmpCond::Eq, Reg::R0, 0, self.l.ret);
        b.mov(Reg::R9, Reg::R0);
        b.call(KTIME_GET_NS);
        b.load(Size::DW, Reg::R1, Reg::R9, ev_budget::WINDOW_START as i16);
        b.mov(Reg::R2, Reg::R0).alu(AluOp::Sub, Reg::R2, Reg::R1);
        b.jmp(JmpCond::Lt, Reg::R2, 1_000_000_000, event_budget);
        b.store(Size::DW, Reg::R9, ev_budget::WINDOW_START as i16, Reg::R0);
        b.store(Size::DW, Reg::R9, ev_budget::SENT as i16, 0);
        b.place(event_budget);
        b.load(Size::DW, Reg::R1, Reg::R9, ev_budget::SENT as i16);
        b.jmp(JmpCond::Eq, Reg::R8, 0, event_send);
        b.jmp(JmpCond::Ge, Reg::R1, Reg::R8, self.l.ret);
        b.place(event_send);
        b.add(Reg::R1, 1).store(Size::DW, Reg::R9, ev_budget::SENT as i16, Reg::R1);
        self.emit_event_record(b);
        b.place(self.l.ret);
        if self.dir == Direction::ToEndpoint && self.options.services {
            self.emit_lb_reply(b);
        }
        if self.dir == Direction::FromEndpoint {
            b.comment("an allowed IP packet is forwarded (when the node is wired)");
            b.jmp(JmpCond::Ne, Reg::R7, TC_ACT_OK, self.l.return_verdict);
            b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
            b.jmp(JmpCond::Eq, Reg::R1, 4, self.l.v4.forward);
            b.jmp(JmpCond::Eq, Reg::R1, 6, self.l.v6.forward);
        }
        b.place(self.l.return_verdict);
        b.mov(Reg::R0, Reg::R7).exit();
        if self.dir == Direction::FromEndpoint {
            for f in [V4, V6] {
                self.emit_forward(b, f);
            }
        }
    }

    /// Forward an allowed packet (r7 = `TC_ACT_OK`): to a local endpoint by redirect, to an
    /// overlay peer through the VXLAN device, or routed by `bpf_fib_lookup` to the egress
    /// device; whatever none of them takes goes to the stack. r6 = ctx, r9 = `fwd_cfg`
    /// flags, r7 = the map value or stack area the new Ethernet header comes from.
    pub(super) fn emit_forward(&self, b: &mut Builder, f: Fam) {
        let [fwd_lxc, fwd_lxc_lookup, fwd_tunnel, fwd_tunnel_lookup, fwd_tunnel_identity, fwd_tunnel_remote] =
            [
                "fwd_lxc",
                "fwd_lxc_lookup",
                "fwd_tunnel",
                "fwd_tunnel_lookup",
                "fwd_tunnel_identity",
                "fwd_tunnel_remote",
            ]
            .map(|n| b.new_label(&f.name(n)));
        let [fwd_fib, fwd_fib_lookup, fwd_neigh] =
            ["fwd_fib", "fwd_fib_lookup", "fwd_neigh"].map(|n| b.new_label(&f.name(n)));
        b.place(self.fl(f).forward).comment("which forwarding steps are on (none until the node is wired)");
        b.ld_map_value(Reg::R1, map::FWD_CFG, 0);
        b.load(Size::W, Reg::R9, Reg::R1, fwd_cfg::FLAGS as i16);
        b.jmp(JmpCond::Eq, Reg::R9, 0, self.l.return_verdict);
        b.load(Size::DW, Reg::R6, Reg::R10, FP_CTX);
        b.comment("the destination as a tunnel key: {128, addr[16]}, IPv4 mapped");
        b.store(Size::W, Reg::R10, FP_LPM, 128);
        if f.family == 4 {
            b.store(Size::W, Reg::R10, FP_LPM + 4, 0);
            b.store(Size::W, Reg::R10, FP_LPM + 8, 0);
            b.store(Size::W, Reg::R10, FP_LPM + 12, V4_MAPPED_WORD as i32);
            b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.daddr).store(
                Size::W,
                Reg::R10,
                FP_LPM + 16,
                Reg::R1,
            );
        } else {
            copy_stack(b, FP_CT + f.daddr, FP_LPM + 4, 16);
        }

        b.place(fwd_lxc).comment("a local endpoint: straight to its veth, its ingress policy runs there");
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::LOCAL as i32, fwd_lxc_lookup);
        b.ja(fwd_tunnel);
        b.place(fwd_lxc_lookup);
        kit::map_lookup(b, map::LXC, FP_LPM + 4);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fwd_tunnel);
        b.mov(Reg::R7, Reg::R0);
        self.emit_rewrite(b, f, "lxc", Some((lxc_value::MAC, lxc_value::NODE_MAC)));
        b.load(Size::W, Reg::R1, Reg::R7, lxc_value::IFINDEX as i16);
        b.mov(Reg::R2, 0);
        b.call(REDIRECT);
        b.exit();

        b.place(fwd_tunnel).comment("a peer node's prefix: encapsulate (VXLAN) and send");
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::OVERLAY as i32, fwd_tunnel_lookup);
        b.ja(fwd_fib);
        b.place(fwd_tunnel_lookup);
        kit::map_lookup(b, map::TUNNEL, FP_LPM);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fwd_fib);
        b.mov(Reg::R7, Reg::R0);
        for off in (0..48).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_FIB + off, 0);
        }
        b.load(Size::W, Reg::R1, Reg::R7, tunnel_value::VNI as i16);
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::TUNNEL_ID as i16, Reg::R1);
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::IDENTITY as i32, fwd_tunnel_identity);
        b.ja(fwd_tunnel_remote);
        b.place(fwd_tunnel_identity)
            .comment("cluster mode: the VNI is the source endpoint's identity (0: none the wire carries)");
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::TUNNEL_ID as i16, 0);
        self.emit_ep_config(b);
        b.jmp(JmpCond::Eq, Reg::R0, 0, fwd_tunnel_remote);
        b.load(Size::W, Reg::R1, Reg::R0, ep_config::IDENTITY as i16);
        b.jmp(JmpCond::Gt, Reg::R1, overlay::MAX_WIRE_IDENTITY as i32, fwd_tunnel_remote);
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::TUNNEL_ID as i16, Reg::R1);
        b.place(fwd_tunnel_remote);
        b.load(Size::W, Reg::R1, Reg::R7, tunnel_value::REMOTE as i16);
        b.store(Size::W, Reg::R10, FP_FIB + tunnel_key_struct::REMOTE_IPV4 as i16, Reg::R1);
        b.store(Size::B, Reg::R10, FP_FIB + tunnel_key_struct::TTL as i16, 64);
        b.mov(Reg::R1, Reg::R6);
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_FIB));
        b.mov(Reg::R3, tunnel_key_struct::SIZE as i32);
        b.mov(Reg::R4, 0);
        b.call(SKB_SET_TUNNEL_KEY);
        b.jmp(JmpCond::Ne, Reg::R0, 0, self.l.return_ok);
        self.emit_rewrite(b, f, "tunnel", Some((tunnel_value::DMAC, tunnel_value::SMAC)));
        b.load(Size::W, Reg::R1, Reg::R7, tunnel_value::IFINDEX as i16);
        b.mov(Reg::R2, 0);
        b.call(REDIRECT);
        b.exit();

        b.place(fwd_fib).comment("anything else: the kernel's FIB picks the egress device and next hop");
        b.jmp(JmpCond::Set, Reg::R9, fwd_cfg::FIB as i32, fwd_fib_lookup);
        b.ja(self.l.return_ok);
        b.place(fwd_fib_lookup);
        for off in (0..fib::SIZE as i16).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_FIB + off, 0);
        }
        let af = if f.family == 4 { fib::AF_INET } else { fib::AF_INET6 };
        b.store(Size::B, Reg::R10, FP_FIB + fib::FAMILY as i16, af);
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        b.store(Size::B, Reg::R10, FP_FIB + fib::L4_PROTOCOL as i16, Reg::R1);
        for (from, to) in [(f.sport, fib::SPORT), (f.dport, fib::DPORT)] {
            b.load(Size::H, Reg::R1, Reg::R10, FP_CT + from).store(
                Size::H,
                Reg::R10,
                FP_FIB + to as i16,
                Reg::R1,
            );
        }
        b.load(Size::W, Reg::R1, Reg::R6, SKB_IFINDEX);
        b.store(Size::W, Reg::R10, FP_FIB + fib::IFINDEX as i16, Reg::R1);
        copy_stack(b, FP_CT, FP_FIB + fib::SRC as i16, f.alen);
        copy_stack(b, FP_CT + f.daddr, FP_FIB + fib::DST as i16, f.alen);
        b.mov(Reg::R1, Reg::R6);
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_FIB));
        b.mov(Reg::R3, fib::SIZE as i32);
        b.mov(Reg::R4, 0);
        b.call(FIB_LOOKUP);
        b.mov(Reg::R7, Reg::R10).add(Reg::R7, i32::from(FP_FIB));
        b.jmp(JmpCond::Eq, Reg::R0, fib::RET_NO_NEIGH, fwd_neigh);
        b.jmp(JmpCond::Ne, Reg::R0, fib::RET_SUCCESS, self.l.return_ok);
        self.emit_rewrite(b, f, "fib", Some((fib::DMAC, fib::SMAC)));
        b.load(Size::W, Reg::R1, Reg::R7, fib::IFINDEX as i16);
        b.mov(Reg::R2, 0);
        b.call(REDIRECT);
        b.exit();
        b.place(fwd_neigh).comment("routed, next hop's MAC unknown: the kernel resolves it");
        self.emit_rewrite(b, f, "neigh", None);
        b.load(Size::W, Reg::R1, Reg::R7, fib::IFINDEX as i16);
        b.mov(Reg::R2, 0).mov(Reg::R3, 0).mov(Reg::R4, 0);
        b.call(REDIRECT_NEIGH);
        b.exit();
        if f.family == 4 {
            b.place(self.l.return_ok).comment("not forwarded here: the stack takes it");
            b.mov(Reg::R0, TC_ACT_OK).exit();
        }
    }

    /// Make the packet leave as routed: an untagged frame of family `f` with a TTL (hop
    /// limit) above 1 has it decremented (IPv4 checksum updated as `ip_decrease_ttl` does)
    /// and, with `macs = (dst, src)` offsets into r7's memory, a new Ethernet header.
    /// Anything else goes to the stack (which answers an expired TTL with ICMP).
    pub(super) fn emit_rewrite(&self, b: &mut Builder, f: Fam, tag: &str, macs: Option<(usize, usize)>) {
        // Offsets from the frame's start (r3): the Ethernet header, then IP.
        let l3 = ETH_HLEN as i16;
        let (ethertype, hdr, ttl) = if f.family == 4 {
            (ethertype::wire(ethertype::IPV4), V4_HLEN, l3 + ipv4::TTL as i16)
        } else {
            (ethertype::wire(ethertype::IPV6), V6_HLEN, l3 + ipv6::HOP_LIMIT as i16)
        };
        kit::skb_data(b, Reg::R6, Reg::R3, Reg::R4);
        b.mov(Reg::R5, Reg::R3).add(Reg::R5, ETH_HLEN + hdr);
        b.jmp(JmpCond::Gt, Reg::R5, Reg::R4, self.l.return_ok);
        b.load(Size::H, Reg::R1, Reg::R3, off(ethernet::ETHERTYPE));
        b.jmp(JmpCond::Ne, Reg::R1, ethertype, self.l.return_ok);
        b.load(Size::B, Reg::R1, Reg::R3, ttl);
        b.jmp(JmpCond::Le, Reg::R1, 1, self.l.return_ok);
        b.add(Reg::R1, -1).store(Size::B, Reg::R3, ttl, Reg::R1);
        if f.family == 4 {
            let done = b.new_label(&f.name(&format!("ttl_csum_{tag}")));
            b.load(Size::H, Reg::R1, Reg::R3, l3 + off(ipv4::CHECKSUM));
            b.add(Reg::R1, 1);
            b.jmp(JmpCond::Lt, Reg::R1, 0xffff, done);
            b.add(Reg::R1, 1);
            b.place(done);
            b.store(Size::H, Reg::R3, l3 + off(ipv4::CHECKSUM), Reg::R1);
        }
        if let Some((dst, src)) = macs {
            for (from, to) in [(dst, off(ethernet::DST)), (src, off(ethernet::SRC))] {
                for half in (0..6i16).step_by(2) {
                    b.load(Size::H, Reg::R1, Reg::R7, from as i16 + half);
                    b.store(Size::H, Reg::R3, to + half, Reg::R1);
                }
            }
        }
    }

    pub(super) fn emit_event_record(&self, b: &mut Builder) {
        let ev = |off: usize| FP_EV + off as i16;
        b.store(Size::B, Reg::R10, ev(event::REASON), Reg::R6);
        b.store(Size::B, Reg::R10, ev(event::DIR), i32::from(self.dir.policy_dir()));
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM).store(Size::B, Reg::R10, ev(event::FAMILY), Reg::R1);
        if let Some(ep) = self.ep {
            b.store(Size::H, Reg::R10, ev(event::EP), i32::from(ep)).param(param::ENDPOINT);
        }
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1).store(Size::H, Reg::R10, ev(event::PROTO), Reg::R1);
        b.comment("identities: the peer's and the endpoint's own");
        b.load(Size::W, Reg::R1, Reg::R10, FP_PEER);
        b.load(Size::W, Reg::R2, Reg::R10, FP_MISC + 4);
        let (src, dst) = match self.dir {
            Direction::FromEndpoint => (Reg::R2, Reg::R1),
            Direction::ToEndpoint => (Reg::R1, Reg::R2),
        };
        b.store(Size::W, Reg::R10, ev(event::SRC_IDENTITY), src);
        b.store(Size::W, Reg::R10, ev(event::DST_IDENTITY), dst);
        b.comment("ports and addresses, by family");
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM);
        let [event_v4, event_v6, output] = ["event_v4", "event_v6", "event_output"].map(|n| b.new_label(n));
        b.jmp(JmpCond::Eq, Reg::R1, 6, event_v6);
        for (f, at) in [(V4, event_v4), (V6, event_v6)] {
            b.place(at);
            b.load(Size::W, Reg::R1, Reg::R10, FP_CT + f.sport).store(
                Size::W,
                Reg::R10,
                ev(event::SPORT),
                Reg::R1,
            );
            for (from, to) in [(0i16, event::SADDR), (f.daddr, event::DADDR)] {
                for w in (0..16i16).step_by(4) {
                    if w < f.alen {
                        b.load(Size::W, Reg::R1, Reg::R10, FP_CT + from + w).store(
                            Size::W,
                            Reg::R10,
                            ev(to) + w,
                            Reg::R1,
                        );
                    } else {
                        b.store(Size::W, Reg::R10, ev(to) + w, 0);
                    }
                }
            }
            b.ja(output);
        }
        b.place(output);
        b.ld_map(Reg::R1, map::EVENTS);
        b.mov(Reg::R2, Reg::R10).add(Reg::R2, i32::from(FP_EV));
        b.mov(Reg::R3, event::SIZE as i32);
        b.mov(Reg::R4, 0);
        b.call(RINGBUF_OUTPUT);
    }
}
