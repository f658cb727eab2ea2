//! Labels are ids: an emitter of the kit used twice in one program places two labels of the
//! same name, each jump lands on its own, and the listing tells them apart (`vlan`,
//! `vlan.2`). A jump to a label *name* does not compile outside sluice-asm's test programs
//! (its `named-labels` feature, off in the library's build: `.ci/run` checks the library
//! alone).

use sluice::codegen::{emit_ethernet, emit_xdp_packet_pointers, kit, EthLabels};
use sluice_asm::text::listing;
use sluice_asm::{Builder, Program};
use sluice_verifier_sim::spec::ProgKind;
use sluice_verifier_sim::spec::{MapKind, MapSpec};

/// The line of `listing` at which `needle` first appears.
fn line_of(listing: &str, needle: &str) -> usize {
    // A label line is the label alone; anything else is found inside its line.
    let exact = needle.ends_with(':');
    listing
        .lines()
        .position(|l| if exact { l == needle } else { l.contains(needle) })
        .unwrap_or_else(|| panic!("no `{needle}` in:\n{listing}"))
}

/// Two Ethernet parses (the second on the IPv4 branch of the first) and two counters.
fn twice() -> Program {
    let mut b = Builder::new();
    let (again, pass) = (b.new_label("again"), b.new_label("pass"));
    emit_xdp_packet_pointers(&mut b);
    let eth = |ipv4| EthLabels {
        ipv4,
        ipv6: pass,
        not_ip: pass,
        truncated_ethernet: pass,
        truncated_vlan: pass,
        vlan_too_deep: pass,
    };
    emit_ethernet(&mut b, eth(again));
    b.place(again);
    emit_ethernet(&mut b, eth(pass));
    b.place(pass);
    kit::counter_add(&mut b, "stats", -4, 0, None);
    kit::counter_add(&mut b, "stats", -4, 1, None);
    b.ret(2);
    b.build().expect("one emitter used twice builds: its labels are ids, not names")
}

#[test]
fn one_emitter_used_twice_places_two_distinguishable_labels() {
    let text = listing(&twice());
    for (name, second) in [("vlan", "vlan.2"), ("counted", "counted.2")] {
        let (first_at, second_at) =
            (line_of(&text, &format!("{name}:")), line_of(&text, &format!("{second}:")));
        let (jump_first, jump_second) =
            (line_of(&text, &format!("<{name}>")), line_of(&text, &format!("<{second}>")));
        assert!(
            jump_first < first_at && first_at < jump_second && jump_second < second_at,
            "each copy's jump lands on its own `{name}` (jump {jump_first}, label {first_at}; \
             jump {jump_second}, label {second_at}):\n{text}"
        );
    }
    let stats = MapSpec {
        name: "stats".into(),
        kind: MapKind::PerCpuArray,
        key_size: 4,
        value_size: 8,
        max_entries: 2,
        flags: 0,
    };
    sluice_verifier_sim::verifier::verify(&twice(), ProgKind::Xdp, &[stats])
        .expect("the simulator's verifier accepts it");
}
