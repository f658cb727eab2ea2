//! Every map's name, defined once: programs refer to maps by these names (resolved to file
//! descriptors at load), and they are the pin names under `maps/`. The kernel sees at most
//! 15 bytes of a name; a test checks they fit.

// The XDP prefilter's maps.
pub const PF_CIDRS: &str = "pf_cidrs";
pub const PF_META: &str = "pf_meta";
pub const PF_STATS: &str = "pf_stats";
pub const PF_V4_L1: &str = "pf_v4_l1";
pub const PF_V4_L2: &str = "pf_v4_l2";
pub const PF_V4_L3: &str = "pf_v4_l3";
pub const PF_V6_L1: &str = "pf_v6_l1";
pub const PF_V6_L2: &str = "pf_v6_l2";
pub const PF_V6_LPM: &str = "pf_v6_lpm";

// The endpoint-policy maps.
pub const IPC_V4_L1: &str = "ipc_v4_l1";
pub const IPC_V4_L2: &str = "ipc_v4_l2";
pub const IPC_V4_L3: &str = "ipc_v4_l3";
pub const IPC_V6: &str = "ipc_v6";
pub const POLICY: &str = "policy";
pub const POL_META: &str = "pol_meta";
pub const POL_TABLE: &str = "pol_table";
pub const CT4: &str = "ct4";
pub const CT6: &str = "ct6";
pub const FRAG4: &str = "frag4";
pub const FRAG6: &str = "frag6";
pub const EP_CONFIG: &str = "ep_config";
pub const EP_STATS: &str = "ep_stats";
pub const EVENTS: &str = "events";
pub const EV_CONFIG: &str = "ev_config";
pub const EV_BUDGET: &str = "ev_budget";
/// The shared endpoint programs, by direction (a program array the stubs tail-call through).
pub const EP_TAIL: &str = "ep_tail";

// The load-balancing maps.
pub const LB_AFF: &str = "lb_aff";
pub const LB_BE: &str = "lb_be";
pub const LB_CT: &str = "lb_ct";
pub const LB_CT4: &str = "lb_ct4";
pub const LB_HINT: &str = "lb_hint";
pub const LB_SLOT: &str = "lb_slot";
pub const LB_SOCK: &str = "lb_sock";
pub const LB_STATS: &str = "lb_stats";
pub const LB_SVC: &str = "lb_svc";

// The forwarding maps.
pub const LXC: &str = "lxc";
pub const TUNNEL: &str = "tunnel";
pub const FWD_CFG: &str = "fwd_cfg";

// The socket layer's maps.
pub const SOCK_HASH: &str = "sock_hash";
pub const SOCK_VERDICT: &str = "sock_verdict";
pub const SOCK_REV: &str = "sock_rev";
pub const SOCK_STATS: &str = "sock_stats";

// The IPsec mode's maps (`maps::ipsec`).
pub const IPSEC_PODS: &str = "ipsec_pods";
pub const IPSEC_NODES: &str = "ipsec_nodes";
pub const IPSEC_CFG: &str = "ipsec_cfg";
pub const IPSEC_STATS: &str = "ipsec_stats";

/// Every name above.
pub const ALL: &[&str] = &[
    CT4,
    CT6,
    EP_CONFIG,
    EP_STATS,
    EP_TAIL,
    EV_BUDGET,
    EV_CONFIG,
    EVENTS,
    FRAG4,
    FRAG6,
    FWD_CFG,
    IPC_V4_L1,
    IPC_V4_L2,
    IPC_V4_L3,
    IPC_V6,
    LB_AFF,
    LB_BE,
    LB_CT,
    LB_CT4,
    LB_HINT,
    LB_SLOT,
    LB_SOCK,
    LB_STATS,
    LB_SVC,
    LXC,
    PF_CIDRS,
    PF_META,
    PF_STATS,
    PF_V4_L1,
    PF_V4_L2,
    PF_V4_L3,
    PF_V6_L1,
    PF_V6_L2,
    PF_V6_LPM,
    POL_META,
    POL_TABLE,
    POLICY,
    TUNNEL,
    SOCK_HASH,
    SOCK_VERDICT,
    SOCK_REV,
    SOCK_STATS,
    IPSEC_PODS,
    IPSEC_NODES,
    IPSEC_CFG,
    IPSEC_STATS,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_fit_the_kernel() {
        let mut seen = std::collections::BTreeSet::new();
        for n in super::ALL {
            assert!(n.len() <= 15, "{n}: the kernel keeps 15 bytes of a map name");
            assert!(seen.insert(n), "{n} twice");
        }
    }
}
