//! The endpoint program's entry and parse: the endpoint's configuration, Ethernet, IPv4
//! and IPv6 headers with their bounds, the transport ports, ICMP errors and later fragments.

use super::*;

impl Gen {
    pub(super) fn emit_entry(&self, b: &mut Builder) {
        b.comment(format!("{:?} program of one endpoint: r8 = data, r9 = data_end", self.dir));
        // Kept in both directions: `to-endpoint` reads the identity mark from it
        // ([`super::overlay`]).
        b.store(Size::DW, Reg::R10, FP_CTX, Reg::R1);
        if self.dir == Direction::ToEndpoint && self.options.services {
            b.comment("services: no L4 header offsets yet (nothing to reverse-translate)");
            b.store(Size::DW, Reg::R10, FP_LB_OFFS, 0);
        }
        if self.ep.is_none() {
            b.comment("shared program: the endpoint number its stub left in cb[0], kept in the event's ep");
            b.load(Size::W, Reg::R2, Reg::R1, SKB_CB0);
            b.store(Size::H, Reg::R10, FP_EV_EP, Reg::R2);
        }
        emit_skb_packet_pointers(b, Reg::R1);
        b.comment("zero what the exit block may read on any path");
        for off in [FP_CT, FP_CT + 8, FP_CT + 16, FP_CT + 24, FP_CT + 32, FP_POL, FP_POL + 8, FP_MISC] {
            b.store(Size::DW, Reg::R10, off, 0);
        }
        b.store(Size::W, Reg::R10, FP_FAM, 0);
        b.store(Size::W, Reg::R10, FP_PEER, 0);
        if self.dir == Direction::ToEndpoint && self.options.services {
            b.comment("services: what the endpoint sent itself (received on this device, leaving it: a");
            b.comment("hairpinned connection, translated already) passes: no policy, no reverse NAT");
            b.load(Size::W, Reg::R2, Reg::R1, SKB_INGRESS_IFINDEX);
            b.load(Size::W, Reg::R3, Reg::R1, SKB_IFINDEX);
            b.jmp(JmpCond::Eq, Reg::R2, Reg::R3, self.site(Reason::AllowHairpin));
        }
    }

    /// `r0 = &ep_config[ep]` or 0; clobbers r1-r5.
    pub(super) fn emit_ep_config(&self, b: &mut Builder) {
        match self.ep {
            Some(ep) => {
                b.store(Size::W, Reg::R10, FP_KEY, i32::from(ep)).param(param::ENDPOINT);
            }
            None => {
                b.load(Size::H, Reg::R1, Reg::R10, FP_EV_EP).store(Size::W, Reg::R10, FP_KEY, Reg::R1);
            }
        }
        kit::map_lookup(b, map::EP_CONFIG, FP_KEY);
    }

    /// Family and protocol (in r1) into `FP_FAM`, the protocol and direction into the key.
    pub(super) fn emit_family(&self, b: &mut Builder, f: Fam) {
        b.store(Size::B, Reg::R10, FP_FAM, f.family);
        b.store(Size::B, Reg::R10, FP_FAM + 1, Reg::R1);
        b.store(Size::B, Reg::R10, FP_CT + f.proto, Reg::R1);
        b.store(Size::B, Reg::R10, FP_CT + f.dir, i32::from(self.dir.policy_dir()));
    }

    pub(super) fn emit_ipv4(&self, b: &mut Builder) {
        let checks = Ipv4Checks {
            truncated: self.site(Reason::DenyTruncated),
            malformed: self.site(Reason::DenyMalformed),
            whole_header: true,
        };
        b.place(self.l.ipv4).comment("ipv4: header with options; r8 = transport header");
        kit::ipv4_header(b, Reg::R8, checks);
        b.comment("the tuple: addresses, protocol, direction (ports below)");
        b.load(Size::W, Reg::R1, Reg::R7, off(ipv4::SRC_ADDR)).store(Size::W, Reg::R10, FP_CT, Reg::R1);
        b.load(Size::W, Reg::R1, Reg::R7, off(ipv4::DST_ADDR)).store(
            Size::W,
            Reg::R10,
            FP_CT + V4.daddr,
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R7, ipv4::PROTOCOL as i16);
        self.emit_family(b, V4);
        if self.dir == Direction::FromEndpoint {
            b.comment("anti-spoofing: the source must be the endpoint's own address");
            self.emit_ep_config(b);
            b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenySpoofed));
            b.load(Size::W, Reg::R1, Reg::R0, ep_config::IPV4 as i16);
            b.load(Size::W, Reg::R2, Reg::R10, FP_CT);
            b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, self.site(Reason::DenySpoofed));
        }
        b.comment("fragments: the key is the tuple with the id for ports");
        copy_stack(b, FP_CT, FP_FRAG, V4.key);
        b.load(Size::H, Reg::R1, Reg::R7, off(ipv4::IDENT)).store(
            Size::W,
            Reg::R10,
            FP_FRAG + V4.sport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R7, off(ipv4::FLG_OFF));
        b.be(16, Reg::R1);
        b.mov(Reg::R3, Reg::R1).alu(AluOp::Rsh, Reg::R3, 13).alu(AluOp::And, Reg::R3, 1);
        b.store(Size::B, Reg::R10, FP_MISC + 1, Reg::R3);
        b.alu(AluOp::And, Reg::R1, 0x1fff);
        b.jmp(JmpCond::Ne, Reg::R1, 0, self.l.v4.later_fragment);
        b.ja(self.l.v4.transport);
    }

    pub(super) fn emit_ipv6(&self, b: &mut Builder) {
        let trunc = self.site(Reason::DenyTruncated);
        let malformed = self.site(Reason::DenyMalformed);
        let [not_nd, later, ext_done] = ["v6_not_nd", "v6_later", "v6_ext_done"].map(|n| b.new_label(n));
        b.place(self.l.ipv6).comment("ipv6: fixed header; r8 = the next header, r4 = its type");
        kit::ipv6_header(b, trunc, malformed);
        b.comment("source and destination: the tuple's first 32 bytes, as the header has them");
        for i in 0..4i16 {
            let at = off(ipv6::SRC_ADDR) + 8 * i;
            b.load(Size::DW, Reg::R1, Reg::R7, at).store(Size::DW, Reg::R10, FP_CT + 8 * i, Reg::R1);
        }
        b.load(Size::B, Reg::R4, Reg::R7, ipv6::NXT_HDR as i16);
        b.mov(Reg::R8, Reg::R7).add(Reg::R8, V6_HLEN);
        b.comment("link-local control passes: multicast listener queries and reports (130-132, 143)");
        b.comment("and neighbor discovery (133-137), sent from link-local or unspecified sources");
        b.jmp(JmpCond::Ne, Reg::R4, IPPROTO_ICMPV6, not_nd);
        guard(b, Reg::R8, 1, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, 0);
        b.jmp(JmpCond::Eq, Reg::R1, 143, self.site(Reason::AllowNotIp));
        b.jmp(JmpCond::Lt, Reg::R1, 130, not_nd);
        b.jmp(JmpCond::Le, Reg::R1, 137, self.site(Reason::AllowNotIp));
        b.place(not_nd);
        if self.dir == Direction::FromEndpoint {
            b.comment("anti-spoofing: the source must be the endpoint's own address");
            self.emit_ep_config(b);
            b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenySpoofed));
            for half in [0i16, 8] {
                b.load(Size::DW, Reg::R1, Reg::R0, ep_config::IPV6 as i16 + half);
                b.load(Size::DW, Reg::R2, Reg::R10, FP_CT + half);
                b.jmp(JmpCond::Ne, Reg::R1, Reg::R2, self.site(Reason::DenySpoofed));
            }
            b.load(Size::B, Reg::R4, Reg::R7, ipv6::NXT_HDR as i16);
        }
        b.store(Size::B, Reg::R10, FP_MISC + 1, 0);
        let rounds = [0, 1, 2].map(|round| b.new_label(&format!("v6_ext_{round}")));
        for round in 0..3 {
            b.place(rounds[round]);
            if round == 2 {
                for t in [0, 43, 44, 60] {
                    b.jmp(JmpCond::Eq, Reg::R4, t, malformed);
                }
                b.ja(ext_done);
                break;
            }
            let next = rounds[round + 1];
            let (frag, opt) =
                (b.new_label(&format!("v6_frag_{round}")), b.new_label(&format!("v6_opt_{round}")));
            b.jmp(JmpCond::Eq, Reg::R4, 44, frag);
            b.jmp(JmpCond::Eq, Reg::R4, 0, opt);
            b.jmp(JmpCond::Eq, Reg::R4, 43, opt);
            b.jmp(JmpCond::Ne, Reg::R4, 60, ext_done);
            b.place(opt).comment("an options or routing header: (len + 1) * 8 bytes");
            guard(b, Reg::R8, 8, trunc);
            b.load(Size::B, Reg::R4, Reg::R8, 0);
            b.load(Size::B, Reg::R2, Reg::R8, 1);
            b.add(Reg::R2, 1).alu(AluOp::Lsh, Reg::R2, 3);
            b.add(Reg::R8, Reg::R2);
            b.ja(next);
            b.place(frag).comment("the fragment header");
            guard(b, Reg::R8, 8, trunc);
            b.load(Size::B, Reg::R4, Reg::R8, ipv6_frag::NXT_HDR as i16);
            b.load(Size::W, Reg::R1, Reg::R8, off(ipv6_frag::IDENT)).store(
                Size::W,
                Reg::R10,
                FP_MISC + 4,
                Reg::R1,
            );
            b.load(Size::H, Reg::R1, Reg::R8, off(ipv6_frag::FLG_OFF));
            b.be(16, Reg::R1);
            b.mov(Reg::R3, Reg::R1).alu(AluOp::And, Reg::R3, 1);
            b.store(Size::B, Reg::R10, FP_MISC + 1, Reg::R3);
            b.add(Reg::R8, ipv6_frag::HEADER_LEN as i32);
            b.alu(AluOp::Rsh, Reg::R1, 3);
            b.jmp(JmpCond::Ne, Reg::R1, 0, later);
            b.ja(next);
        }
        b.place(later).comment("a later fragment: the transport header is elsewhere");
        b.mov(Reg::R1, Reg::R4);
        self.emit_family(b, V6);
        self.emit_v6_frag_key(b);
        b.ja(self.l.v6.later_fragment);
        b.place(ext_done).comment("r4 = the transport protocol");
        b.mov(Reg::R1, Reg::R4);
        self.emit_family(b, V6);
        self.emit_v6_frag_key(b);
        b.ja(self.l.v6.transport);
    }

    /// The `frag6` key: the tuple with the fragment id (kept in `FP_MISC + 4`) for ports.
    pub(super) fn emit_v6_frag_key(&self, b: &mut Builder) {
        copy_stack(b, FP_CT, FP_FRAG, V6.key);
        b.load(Size::W, Reg::R1, Reg::R10, FP_MISC + 4).store(Size::W, Reg::R10, FP_FRAG + V6.sport, Reg::R1);
        b.store(Size::W, Reg::R10, FP_MISC + 4, 0);
    }

    /// Ports (r8 = the transport header), or ICMP type and echo id.
    pub(super) fn emit_transport(&self, b: &mut Builder, f: Fam) {
        let trunc = self.site(Reason::DenyTruncated);
        let fl = self.fl(f);
        let [tcp_hdr, ports, read_ports, icmp_hdr] =
            ["tcp", "ports", "read_ports", "icmp"].map(|n| b.new_label(&f.name(n)));
        b.place(fl.transport);
        b.load(Size::B, Reg::R1, Reg::R10, FP_FAM + 1);
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_TCP, tcp_hdr);
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_UDP, ports);
        b.jmp(JmpCond::Eq, Reg::R1, IPPROTO_SCTP, ports);
        b.jmp(JmpCond::Eq, Reg::R1, f.icmp, icmp_hdr);
        b.ja(fl.conntrack);
        b.place(tcp_hdr).comment("tcp: ports and flags");
        guard(b, Reg::R8, tcp::FLAGS.end as i32, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, TCP_FLAGS_BYTE).store(Size::B, Reg::R10, FP_MISC, Reg::R1);
        b.ja(read_ports);
        b.place(ports).comment("udp, sctp: ports");
        b.comment("(TCP, UDP and SCTP all start with the two ports)");
        guard(b, Reg::R8, udp::DST_PORT.end as i32, trunc);
        b.place(read_ports);
        b.load(Size::H, Reg::R1, Reg::R8, off(udp::SRC_PORT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.sport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R8, off(udp::DST_PORT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.dport,
            Reg::R1,
        );
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R1);
        b.ja(if self.options.services { fl.lb } else { fl.conntrack });
        b.place(icmp_hdr).comment("icmp: the type is the policy port; echo id is the source port");
        guard(b, Reg::R8, icmp::HEADER_LEN as i32, trunc);
        b.load(Size::B, Reg::R1, Reg::R8, icmp::TYPE as i16);
        b.mov(Reg::R2, Reg::R1).alu(AluOp::Lsh, Reg::R2, 8);
        b.store(Size::H, Reg::R10, FP_MISC + 2, Reg::R2);
        let errors: &[i32] = if f.family == 4 { &[3, 11, 12] } else { &[1, 2, 3, 4] };
        for &t in errors {
            b.jmp(JmpCond::Eq, Reg::R1, t, fl.icmp_error);
        }
        b.comment("queries (echo; v4 timestamp, information, address mask): the tuple's ports are");
        b.comment("(id, request type) for a request and (request type, id) for its reply, so a");
        b.comment("reply's reversed tuple is its request's and no two kinds of message match;");
        b.comment("any other type is (0, type): it is never another message's reply");
        let queries: &[(i32, i32)] =
            if f.family == 4 { &[(8, 0), (13, 14), (15, 16), (17, 18)] } else { &[(128, 129)] };
        let (request, reply) = (b.new_label(&f.name("icmp_request")), b.new_label(&f.name("icmp_reply")));
        for &(req, _) in queries {
            b.jmp(JmpCond::Eq, Reg::R1, req, request);
        }
        for &(req, rep) in queries {
            let next = b.new_label(&f.name("icmp_not_reply"));
            b.jmp(JmpCond::Ne, Reg::R1, rep, next);
            b.mov(Reg::R1, req).ja(reply);
            b.place(next);
        }
        b.comment("(the type in network order, as the key's ports are)");
        b.be(16, Reg::R1).store(Size::H, Reg::R10, FP_CT + f.dport, Reg::R1);
        b.ja(fl.conntrack);
        b.place(request);
        b.be(16, Reg::R1).store(Size::H, Reg::R10, FP_CT + f.dport, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R8, off(icmp::ECHO_IDENT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.sport,
            Reg::R1,
        );
        b.ja(fl.conntrack);
        b.place(reply);
        b.be(16, Reg::R1).store(Size::H, Reg::R10, FP_CT + f.sport, Reg::R1);
        b.load(Size::H, Reg::R1, Reg::R8, off(icmp::ECHO_IDENT)).store(
            Size::H,
            Reg::R10,
            FP_CT + f.dport,
            Reg::R1,
        );
        b.ja(fl.conntrack);
    }

    /// An ICMP error passes if the packet it quotes belongs to a tracked connection.
    pub(super) fn emit_icmp_error(&self, b: &mut Builder, f: Fam) {
        // The quoted header follows the 8-byte ICMP header; no options or extension headers.
        let (hlen, src, dst, proto) = if f.family == 4 {
            (V4_HLEN as i16, off(ipv4::SRC_ADDR), off(ipv4::DST_ADDR), ipv4::PROTOCOL as i16)
        } else {
            (V6_HLEN as i16, off(ipv6::SRC_ADDR), off(ipv6::DST_ADDR), ipv6::NXT_HDR as i16)
        };
        // Offsets into the packet from r8 (the ICMP header): the quoted IP header follows it.
        let quoted = icmp::HEADER_LEN as i16;
        let fl = self.fl(f);
        b.place(fl.icmp_error).comment("icmp error: does it quote a tracked connection?");
        guard(b, Reg::R8, i32::from(quoted + hlen + 4), self.site(Reason::DenyTruncated));
        if f.family == 4 {
            b.load(Size::B, Reg::R1, Reg::R8, quoted + ipv4::VER_IHL as i16);
            b.jmp(JmpCond::Ne, Reg::R1, 0x45, fl.conntrack);
        }
        b.comment("the quoted tuple, as sent (FP_CTR), and reversed (FP_FRAG)");
        for off in (0..f.key).step_by(8) {
            b.store(Size::DW, Reg::R10, FP_CTR + off, 0);
            b.store(Size::DW, Reg::R10, FP_FRAG + off, 0);
        }
        for w in (0..f.alen).step_by(4) {
            b.load(Size::W, Reg::R1, Reg::R8, quoted + src + w);
            b.store(Size::W, Reg::R10, FP_CTR + w, Reg::R1).store(
                Size::W,
                Reg::R10,
                FP_FRAG + f.daddr + w,
                Reg::R1,
            );
            b.load(Size::W, Reg::R1, Reg::R8, quoted + dst + w);
            b.store(Size::W, Reg::R10, FP_CTR + f.daddr + w, Reg::R1).store(
                Size::W,
                Reg::R10,
                FP_FRAG + w,
                Reg::R1,
            );
        }
        b.load(Size::H, Reg::R1, Reg::R8, quoted + hlen + off(udp::SRC_PORT));
        b.store(Size::H, Reg::R10, FP_CTR + f.sport, Reg::R1).store(
            Size::H,
            Reg::R10,
            FP_FRAG + f.dport,
            Reg::R1,
        );
        b.load(Size::H, Reg::R1, Reg::R8, quoted + hlen + off(udp::DST_PORT));
        b.store(Size::H, Reg::R10, FP_CTR + f.dport, Reg::R1).store(
            Size::H,
            Reg::R10,
            FP_FRAG + f.sport,
            Reg::R1,
        );
        b.load(Size::B, Reg::R1, Reg::R8, quoted + proto);
        b.store(Size::B, Reg::R10, FP_CTR + f.proto, Reg::R1).store(
            Size::B,
            Reg::R10,
            FP_FRAG + f.proto,
            Reg::R1,
        );
        b.comment("sent by the endpoint: its own connection (opposite direction) or a reply in ours");
        b.store(Size::B, Reg::R10, FP_CTR + f.dir, i32::from(self.opposite_dir()));
        b.store(Size::B, Reg::R10, FP_FRAG + f.dir, i32::from(self.dir.policy_dir()));
        b.comment("related only to a live entry: an expired connection relates nothing");
        for key in [FP_CTR, FP_FRAG] {
            let next = b.new_label(&f.name("icmp_quoted_miss"));
            kit::map_lookup(b, f.ct, key);
            b.jmp(JmpCond::Eq, Reg::R0, 0, next);
            b.mov(Reg::R6, Reg::R0);
            b.call(KTIME_GET_COARSE_NS);
            b.load(Size::DW, Reg::R1, Reg::R6, ct_value::EXPIRES as i16);
            b.jmp(JmpCond::Le, Reg::R0, Reg::R1, self.site(Reason::AllowRelated));
            b.place(next);
        }
        b.ja(fl.conntrack);
    }

    pub(super) fn emit_later_fragment(&self, b: &mut Builder, f: Fam) {
        b.place(self.fl(f).later_fragment)
            .comment("a later fragment: the first fragment's verdict, while it lasts");
        kit::map_lookup(b, f.frag, FP_FRAG);
        b.jmp(JmpCond::Eq, Reg::R0, 0, self.site(Reason::DenyFragment));
        b.mov(Reg::R6, Reg::R0);
        b.call(KTIME_GET_COARSE_NS);
        b.alu(AluOp::Rsh, Reg::R0, FRAG_CLOCK_SHIFT);
        b.load(Size::W, Reg::R1, Reg::R6, frag_value::EXPIRES as i16);
        b.jmp(JmpCond::Gt, Reg::R0, Reg::R1, self.site(Reason::DenyFragment));
        b.load(Size::B, Reg::R1, Reg::R6, frag_value::VERDICT as i16);
        b.jmp(JmpCond::Eq, Reg::R1, 1, self.site(Reason::AllowFragment));
        b.ja(self.site(Reason::DenyFragment));
    }
}
