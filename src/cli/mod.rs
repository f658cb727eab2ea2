//! The `sluice` command line: each subcommand is a thin shell over the library.

mod commands;
mod node_sim;
mod policy;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// sluice: a node's networking state compiled to eBPF by Rust code.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Fail at once, instead of waiting, when another sluice command is changing the node
    /// (holds the lock on its pin directory).
    #[arg(long, global = true)]
    pub no_wait: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile the built-in default node, check it in the simulator and (as root) in the
    /// kernel with golden packets, and print what every packet got.
    Demo {
        /// Instead: three nodes in network namespaces, each with its own daemon, joined
        /// through an etcd the demo starts (root; needs `etcd`: apt-get install etcd-server).
        #[arg(long)]
        cluster: bool,
        /// With --cluster: each node's lease TTL in seconds (how soon a dead node is dropped).
        #[arg(long, default_value_t = 5, requires = "cluster")]
        lease_ttl: u64,
    },
    /// Print each program's listing, or write ELF objects with --out.
    Compile {
        /// The node file (multi-document YAML).
        node: PathBuf,
        /// Write one ELF object per program into this directory instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Replay a capture through the simulated node: each packet runs through every program
    /// the node runs for it (prefilter or the source endpoint's program, then the
    /// destination endpoint's), conntrack carried across the capture; prints its path.
    Sim {
        node: PathBuf,
        /// A pcap or pcapng file.
        #[arg(long)]
        pcap: PathBuf,
        /// Print only the summary.
        #[arg(long, short)]
        quiet: bool,
        /// Run the XDP prefilter alone and print each packet's verdict and reason.
        #[arg(long, conflicts_with_all = ["json", "kernel"])]
        prefilter_only: bool,
        /// The default; accepted for scripts written when whole-node replay was opt-in.
        #[arg(long, hide = true, conflicts_with = "prefilter_only")]
        whole_node: bool,
        /// One JSON object per packet.
        #[arg(long)]
        json: bool,
        /// (root) Also run the capture through the loaded programs with BPF_PROG_TEST_RUN
        /// and report every packet whose path differs.
        #[arg(long)]
        kernel: bool,
    },
    /// Policy questions about a node file.
    Policy {
        #[command(subcommand)]
        op: PolicyOp,
    },
    /// Create, fill and pin maps and programs (without attaching them).
    Load {
        node: PathBuf,
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Remove what `load` pinned.
    Unload {
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// This node's WireGuard key in the state directory ($SLUICE_STATE_DIR, default
    /// /var/lib/sluice): `rotate` replaces it (a running daemon takes the new key on its
    /// next poll; peers need the new public key in their node files), `show` prints the
    /// public key. The private key is never printed.
    Encrypt {
        #[command(subcommand)]
        op: EncryptOp,
    },
    /// Change or show the pinned prefilter deny set, live.
    Prefilter {
        #[command(subcommand)]
        op: PrefilterOp,
        #[arg(long, global = true, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Show the pinned node's services: frontends, backends, states, connections (root).
    Service {
        #[command(subcommand)]
        op: ServiceOp,
        #[arg(long, global = true, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Print policy verdicts and drops as flows, from the pinned ring buffer (root).
    Monitor {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this many flows.
        #[arg(long)]
        count: Option<usize>,
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print L7 (HTTP) flows from this `sluice proxy` access log instead.
        #[arg(long)]
        l7: Option<PathBuf>,
        /// The loaded node's file: each `deny_policy` drop is followed by the rules that
        /// denied it (as `sluice policy explain` says).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Switch datapath events on or off, with a per-CPU rate limit (events per second).
    Events {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Attach the loaded node's programs to its devices: each endpoint's programs on tcx
    /// ingress and egress of its interface (netlink cls_bpf where the kernel has no tcx
    /// links), pinned so they outlive the command. Again: programs swapped in place.
    Attach {
        node: PathBuf,
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Also put the prefilter on this device's XDP hook (native if the driver has it,
        /// else generic).
        #[arg(long)]
        xdp_device: Option<String>,
        /// How hooks are attached: `tcx` (bpf links, pinned; each costs the kernel one RCU
        /// grace period under RTNL, see `--grace-periods`) or `tc` (netlink cls_bpf
        /// filters; no grace period per hook).
        #[arg(long, value_enum, default_value_t = HookMechanism::Tcx)]
        attach: HookMechanism,
        /// How the grace period of each tcx link is waited for: `expedited` turns on
        /// /sys/kernel/rcu_expedited for the length of the attach (0.1 ms a link instead
        /// of ~10 ms; every synchronize_rcu on the machine sends IPIs meanwhile), `normal`
        /// leaves the kernel's RCU settings alone.
        #[arg(long, value_enum, default_value_t = GracePeriods::Expedited)]
        grace_periods: GracePeriods,
    },
    /// Show programs, attachments (link or netlink), map fill levels and nonzero counters.
    Status {
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Load (or adopt) and attach a node, then keep it in step with its file and serve a
    /// root-only socket (status, apply, metrics). Pins and links outlive it.
    Daemon {
        /// The node file to load and watch.
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, default_value = crate::daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// How often the node file is checked for changes, in milliseconds.
        #[arg(long, default_value_t = 500)]
        poll_ms: u64,
        /// How hooks are attached (see `sluice attach --help`).
        #[arg(long, value_enum, default_value_t = HookMechanism::Tcx)]
        attach: HookMechanism,
        /// How tcx grace periods are waited for (see `sluice attach --help`).
        #[arg(long, value_enum, default_value_t = GracePeriods::Expedited)]
        grace_periods: GracePeriods,
        /// Join the cluster kept in these etcd v3 endpoints (comma separated); without it the
        /// node file alone is the cluster.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Seconds this node's lease lives without renewal: how soon the others drop it
        /// after it dies.
        #[arg(long, default_value_t = 15)]
        lease_ttl: i64,
    },
    /// The L7 (HTTP) policy proxy: judges each request by the node file's `rules.http`
    /// (reloaded when the file changes), forwards or answers 403. Transparent (the datapath
    /// redirects to it) unless --upstream makes it a reverse proxy to one address.
    Proxy {
        /// The node file with the policies.
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "0.0.0.0:15001")]
        listen: std::net::SocketAddr,
        /// Reverse mode: send every connection here (judged as if addressed here).
        #[arg(long)]
        upstream: Option<std::net::SocketAddr>,
        /// Append access records (JSON lines) here instead of standard output.
        #[arg(long)]
        access_log: Option<PathBuf>,
        /// Rewrite Prometheus metrics here every second.
        #[arg(long)]
        metrics_file: Option<PathBuf>,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Most headers in one request.
        #[arg(long, default_value_t = 100)]
        max_headers: usize,
        /// Most bytes in a request head (request line and headers; at least 8192).
        #[arg(long, default_value_t = 65536)]
        max_head_bytes: usize,
    },
    /// Detach and remove everything sluice attached and pinned.
    Down {
        #[arg(long, default_value = crate::node::load::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Time our programs against the clang-built anchors, in the same run (root). Runs the
    /// `sluice-bench` binary beside this one (crate `src/bench/`) with these arguments: see
    /// `sluice bench --help`.
    #[command(disable_help_flag = true)]
    Bench {
        /// The arguments of `sluice-bench` (--sizes, --repeat, --rounds, --parts).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// `sluice encrypt` operations.
#[derive(Debug, Subcommand)]
pub enum EncryptOp {
    /// Replace this node's WireGuard key with a fresh one; print the new public key.
    Rotate,
    /// Print this node's WireGuard public key (made on first use).
    Show,
}

/// `sluice prefilter` operations.
#[derive(Debug, Subcommand)]
pub enum PrefilterOp {
    /// Add prefixes to the deny set.
    Add { cidrs: Vec<String> },
    /// Remove prefixes from the deny set.
    Del { cidrs: Vec<String> },
    /// List the deny set.
    List,
    /// Show the verdict counters.
    Stats,
}

/// `sluice policy` operations.
#[derive(Debug, Subcommand)]
pub enum PolicyOp {
    /// The verdict of each endpoint's policy for one flow, and the rules (file:line) that
    /// decided it, or the policies that isolate the endpoint with no rule allowing it.
    Explain {
        /// The node file.
        node: PathBuf,
        /// The source: an endpoint name, `host`, or an address.
        #[arg(long)]
        from: String,
        /// The destination: an endpoint name, `host`, or an address.
        #[arg(long)]
        to: String,
        /// tcp, udp, sctp, icmp, icmpv6, or a protocol number.
        #[arg(long, default_value = "tcp", value_parser = policy::parse_protocol)]
        proto: u8,
        /// Destination port (ICMP: the type).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `sluice service` operations.
#[derive(Debug, Subcommand)]
pub enum ServiceOp {
    /// Every frontend with its backends, their states, slots and pinned connections, as the
    /// kernel's maps have them.
    List {
        /// A node file whose Service documents name the frontends.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Run the command line; errors are printed with their whole chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let wait = if cli.no_wait { crate::node::lock::Wait::Fail } else { crate::node::lock::Wait::Block };
    match commands::run(cli.command, wait) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(1)
        }
    }
}

pub use crate::node::wire::grace::GracePeriods;

/// How endpoint and device hooks are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HookMechanism {
    /// bpf links on tcx and XDP (pinned, owned; the default where the kernel has them).
    Tcx,
    /// netlink: cls_bpf filters on clsact and IFLA_XDP (the fallback path, on demand).
    Tc,
}

impl HookMechanism {
    /// The attach options this mechanism asks for.
    pub fn options(
        self,
        xdp_device: Option<String>,
        grace_periods: GracePeriods,
    ) -> crate::node::wire::AttachOptions {
        crate::node::wire::AttachOptions {
            xdp_device,
            netlink_only: self == HookMechanism::Tc,
            grace_periods,
        }
    }
}
