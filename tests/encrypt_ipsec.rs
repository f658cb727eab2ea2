//! IPsec mode against this kernel (issue 15: "the netlink messages are tested against what
//! the kernel accepts (policies) ... the clear refusal on this kernel"): in a scratch
//! namespace, every policy the mode programs for a peer is accepted by the kernel; an ESP
//! state is accepted where the kernel has ESP, and otherwise `check_kernel` refuses with a
//! message naming the kernel options. The byte comparison with `ip xfrm` is a unit test of
//! `sluice::netlink::xfrm`.

use sluice::encrypt::ipsec::{self, IpsecPeer};
use sluice::model::encryption::parse_ipsec_key;
use sluice::netlink::{NetNs, Netlink};

#[test]
fn policies_are_accepted_and_states_need_esp() {
    if !sluice::sys::require_kernel("policies_are_accepted_and_states_need_esp") {
        return;
    }
    let ns = NetNs::create(&format!("slipsec-{}", std::process::id())).expect("scratch namespace");
    let key = parse_ipsec_key("3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128").unwrap();
    let peer = IpsecPeer {
        node_id: 1,
        address: "172.16.0.2".parse().unwrap(),
        boot_id: "66666666-7777-8888-9999-000000000000".into(),
        prefixes: vec!["10.0.2.0/24".parse().unwrap(), "fd00:0:2::/64".parse().unwrap()],
    };
    let local_prefixes = ["10.0.1.0/24".parse().unwrap(), "fd00:0:1::/64".parse().unwrap()];
    let (states, policies) = ipsec::states_and_policies(
        "172.16.0.1".parse().unwrap(),
        "11111111-2222-3333-4444-555555555555",
        &local_prefixes,
        &peer,
        &[key],
    );
    assert_eq!((states.len(), policies.len()), (2, 4), "out+in state per key, out+in policy per prefix pair");
    let (policy_results, state_result, check) = ns
        .run_in(|| {
            let x = Netlink::open_xfrm().expect("NETLINK_XFRM socket");
            let p: Vec<_> = policies.iter().map(|p| (p.clone(), x.add_xfrm_policy(p))).collect();
            (p, x.add_xfrm_state(&states[0]), ipsec::check_kernel(&x))
        })
        .expect("runs in the namespace");
    for (p, r) in &policy_results {
        assert!(r.is_ok(), "policy refused: {p:?}: {r:?}");
    }
    match (state_result, check) {
        (Ok(()), Ok(())) => eprintln!("this kernel has ESP: states accepted"),
        (Err(e), Err(refusal)) => {
            let text = refusal.to_string();
            eprintln!("ESP state refused ({e}); start refuses with: {text}");
            for option in ["CONFIG_INET_ESP", "CONFIG_XFRM_USER", "mode ipsec"] {
                assert!(text.contains(option), "the refusal names {option}: {text}");
            }
        }
        (s, c) => panic!("the state and the probe disagree: state {s:?}, probe {c:?}"),
    }
}
