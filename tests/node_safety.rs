//! State safety of the commands that change a node (issue 16), with real processes (the
//! built `sluice` binary) as root: one writer per node (concurrent commands lose nothing;
//! `--no-wait`; a running daemon owns its node), and commands that act only on what is
//! ours (a pin directory that is not a bpffs pin directory of ours is refused untouched,
//! symlinks are not followed, `down` removes no device it did not create).

#[path = "support/netns.rs"]
mod netns;

use sluice::golden::probes::udp4;
use sluice::maps::prefilter::Prefix;
use sluice::node::load::{self, MapView};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("the sluice binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("sluice-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A pin directory under /sys/fs/bpf, with a node file beside it in /tmp; both removed on
/// drop, also on panic.
struct Node {
    pin: PathBuf,
    file: PathBuf,
}

impl Node {
    /// A prefilter-only node denying `deny`.
    fn new(tag: &str, deny: &[&str]) -> Node {
        let name = unique(tag);
        let file = std::env::temp_dir().join(format!("{name}.yaml"));
        let list: Vec<String> = deny.iter().map(|d| format!("\"{d}\"")).collect();
        std::fs::write(
            &file,
            format!(
                "apiVersion: sluice.dev/v1\nkind: Node\nmetadata:\n  name: n\nspec:\n  prefilter:\n    deny: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("write the node file");
        Node { pin: PathBuf::from("/sys/fs/bpf").join(name), file }
    }

    fn pin(&self) -> &str {
        self.pin.to_str().expect("a UTF-8 path")
    }

    fn file(&self) -> &str {
        self.file.to_str().expect("a UTF-8 path")
    }

    fn load(&self) {
        let o = sluice(&["load", self.file(), "--pin-dir", self.pin()]);
        assert!(o.status.success(), "load: {}", text(&o));
    }

    fn listed(&self) -> Vec<String> {
        let o = sluice(&["prefilter", "list", "--pin-dir", self.pin()]);
        assert!(o.status.success(), "list: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
    }

    /// The deny set as the pinned tables enforce it, checked against the listing: every
    /// listed prefix's first and last address are dropped, the address past it passes
    /// unless listed; and the tables say exactly what the listing says.
    fn check_enforced(&self) -> Vec<String> {
        let sys = sluice::sys::kernel();
        let prog =
            sluice::sys::Program::from_pin(&sys, &self.pin.join("programs/prefilter")).expect("pinned");
        let maps = load::open_prefilter(&sys, &self.pin).expect("pinned maps");
        let set = load::prefilter_set(&maps).expect("listing reads");
        let mut wrong =
            load::prefilter_problems_of(|n| maps.get(n).map(|m| m as &dyn MapView)).expect("reads");
        for &(a, l) in &set.v4 {
            let last = a | !sluice::maps::prefilter::mask32(l);
            for probe in [a, last, last.wrapping_add(1)] {
                let want = if set.denies_v4(probe) { 1 } else { 2 };
                let got =
                    prog.test_run(&sluice::sys::TestRunOpts::packet(&udp4(probe))).expect("runs").retval;
                if got != want {
                    wrong.push(format!("{}: got {got}, want {want}", std::net::Ipv4Addr::from(probe)));
                }
            }
        }
        wrong
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ =
            Command::new(env!("CARGO_BIN_EXE_sluice")).args(["unload", "--pin-dir"]).arg(&self.pin).output();
        let _ = std::fs::remove_dir(self.pin.join("links"));
        let _ = std::fs::remove_dir(&self.pin);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Prefixes for one adding loop: many share /16s with the other loop's, so that the two
/// would rewrite the same level-2 chunks if they were not serialized.
fn loop_prefixes(which: u32, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("10.{}.{}.0/24", 100 + i % 6, which * 100 + i)).collect()
}

/// "Two `sluice prefilter add` loops on one node: every call exits 0 with "added 1", yet
/// 5–96 of 120–180 prefixes are missing from `prefilter list` and not dropped" (issue 16).
#[test]
fn two_concurrent_prefilter_add_loops_lose_nothing() {
    if !sluice::sys::require_kernel("two_concurrent_prefilter_add_loops_lose_nothing") {
        return;
    }
    let node = Node::new("addloops", &["192.0.2.0/24"]);
    node.load();
    let loops: Vec<std::thread::JoinHandle<Vec<String>>> = (0..2)
        .map(|which| {
            let pin = node.pin().to_string();
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                for p in loop_prefixes(which, 40) {
                    let o = sluice(&["prefilter", "add", &p, "--pin-dir", &pin]);
                    if !o.status.success() {
                        failed.push(format!("add {p}: {}", text(&o)));
                    }
                }
                failed
            })
        })
        .collect();
    let failed: Vec<String> = loops.into_iter().flat_map(|h| h.join().expect("the loop runs")).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let listed = node.listed();
    let missing: Vec<String> =
        (0..2).flat_map(|w| loop_prefixes(w, 40)).filter(|p| !listed.contains(p)).collect();
    assert!(missing.is_empty(), "{} prefixes added but not listed: {missing:?}", missing.len());
    assert_eq!(listed.len(), 81, "{listed:?}");
    let wrong = node.check_enforced();
    assert!(wrong.is_empty(), "tables disagree with the listing: {wrong:?}");
}

/// "Two `sluice load` runs on one pin dir: one exits 0, the other fails with EEXIST and its
/// cleanup removes the winner's pins — nothing is loaded" (issue 16).
#[test]
fn two_concurrent_loads_leave_a_loaded_node() {
    if !sluice::sys::require_kernel("two_concurrent_loads_leave_a_loaded_node") {
        return;
    }
    for round in 0..3 {
        let node = Node::new("loads", &["192.0.2.0/24", "198.51.100.0/24"]);
        let children: Vec<std::process::Child> = (0..2)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_sluice"))
                    .args(["load", node.file(), "--pin-dir", node.pin()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawns")
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().expect("waits");
            assert!(o.status.success(), "round {round}: load: {}", text(&o));
        }
        assert_eq!(node.listed(), ["192.0.2.0/24", "198.51.100.0/24"], "round {round}");
        assert!(node.pin.join("programs/prefilter").exists(), "round {round}: the program is pinned");
        let wrong = node.check_enforced();
        assert!(wrong.is_empty(), "round {round}: {wrong:?}");
    }
}

/// "a second writer waits with a message or fails with `--no-wait`" (issue 16).
#[test]
fn a_second_writer_waits_with_a_message_or_fails_with_no_wait() {
    if !sluice::sys::require_kernel("a_second_writer_waits_with_a_message_or_fails_with_no_wait") {
        return;
    }
    let node = Node::new("nowait", &["192.0.2.0/24"]);
    node.load();
    let held = sluice::node::lock::acquire(&node.pin, sluice::node::lock::Wait::Fail, |_| {})
        .expect("locks")
        .expect("the pin dir exists");
    let o = sluice(&["--no-wait", "prefilter", "add", "203.0.113.0/24", "--pin-dir", node.pin()]);
    assert!(!o.status.success(), "refused while locked: {}", text(&o));
    let pid = format!("pid {}", std::process::id());
    assert!(text(&o).contains("holds the lock") && text(&o).contains(&pid), "{}", text(&o));

    let waiter = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["prefilter", "add", "203.0.113.0/24", "--pin-dir", node.pin()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!node.listed().contains(&"203.0.113.0/24".to_string()), "the waiter waited");
    drop(held);
    let o = waiter.wait_with_output().expect("waits");
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("waiting for the lock on {} held by {pid}", node.pin())),
        "the waiter says whom it waits for: {stderr}"
    );
    assert!(node.listed().contains(&"203.0.113.0/24".to_string()));
}

/// "The daemon owns the node while it runs: CLI changes go through its socket (or are
/// refused with a clear message)"; and "a second daemon on the same socket applies its
/// config before noticing the first" (issue 16).
#[test]
fn a_running_daemon_owns_its_node() {
    if !sluice::sys::require_kernel("a_running_daemon_owns_its_node") {
        return;
    }
    let node = Node::new("daemonowns", &["192.0.2.0/24"]);
    let socket = std::env::temp_dir().join(format!("{}.sock", unique("daemonowns")));
    let socket_s = socket.to_str().expect("UTF-8").to_string();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["daemon", "--config", node.file(), "--pin-dir", node.pin(), "--socket", &socket_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon_pid = daemon.id();
    let _kill = Kill(&mut daemon);
    let started = std::time::Instant::now();
    while !socket.exists() {
        assert!(started.elapsed().as_secs() < 60, "the daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for args in [
        vec!["prefilter", "add", "203.0.113.0/24"],
        vec!["unload"],
        vec!["down"],
        vec!["load", node.file()],
        vec!["events", "on"],
    ] {
        let mut all = args.clone();
        all.extend(["--pin-dir", node.pin()]);
        let o = sluice(&all);
        assert!(!o.status.success(), "{args:?} refused: {}", text(&o));
        let want = format!("owned by the sluice daemon (pid {daemon_pid}, socket {socket_s})");
        assert!(text(&o).contains(&want), "{args:?}: {}", text(&o));
    }
    assert!(node.pin.join("programs/prefilter").exists(), "nothing was removed");
    assert_eq!(node.listed(), ["192.0.2.0/24"]);

    // A second daemon on another pin dir but the same socket is refused before it loads.
    let other = Node::new("daemonowns2", &["198.51.100.0/24"]);
    let o = sluice(&["daemon", "--config", other.file(), "--pin-dir", other.pin(), "--socket", &socket_s]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("another daemon already serves"), "{}", text(&o));
    assert!(!other.pin.join("programs").exists(), "the second daemon loaded nothing");
}

/// A directory tree removed on drop, also on panic (symlinks removed, never followed).
struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file under `dir`, recursively, without following symlinks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map(|r| r.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// "`sluice unload --pin-dir ~/proj` deleted `proj/maps/notes.txt`, `proj/programs/main.c`
/// and the directory" (issue 16): a pin dir that is not on bpffs is refused, nothing deleted.
#[test]
fn unload_and_down_refuse_a_directory_that_is_not_a_pin_dir() {
    if !sluice::sys::require_kernel("unload_and_down_refuse_a_directory_that_is_not_a_pin_dir") {
        return;
    }
    let proj = Tree(std::env::temp_dir().join(unique("proj")));
    std::fs::create_dir_all(proj.0.join("maps")).expect("mkdir");
    std::fs::create_dir_all(proj.0.join("programs")).expect("mkdir");
    std::fs::write(proj.0.join("maps/notes.txt"), "notes").expect("write");
    std::fs::write(proj.0.join("programs/main.c"), "int main;").expect("write");
    let before = files_under(&proj.0);
    let dir = proj.0.to_str().expect("UTF-8");
    for cmd in ["unload", "down"] {
        let o = sluice(&[cmd, "--pin-dir", dir]);
        assert!(!o.status.success(), "{cmd} refused: {}", text(&o));
        assert!(text(&o).contains("not on a bpf filesystem"), "{cmd}: {}", text(&o));
        assert_eq!(files_under(&proj.0), before, "{cmd} deleted nothing");
    }
}

/// "a non-root user planted `sluice/maps -> /some/root-only/dir` and root's `unload` deleted
/// every file in it" (issue 16): symlinks are not followed, and entries that are not pins of
/// the expected kind refuse the command before anything is removed.
#[test]
fn unload_and_down_follow_no_symlink_and_remove_only_pins() {
    if !sluice::sys::require_kernel("unload_and_down_follow_no_symlink_and_remove_only_pins") {
        return;
    }
    let other = Tree(std::env::temp_dir().join(unique("otherdir")));
    std::fs::create_dir_all(&other.0).expect("mkdir");
    std::fs::write(other.0.join("precious.txt"), "keep me").expect("write");

    // A pin dir holding a real program pin and `maps -> otherdir`.
    let node = Node::new("symlink", &["192.0.2.0/24"]);
    node.load();
    let planted = Tree(PathBuf::from("/sys/fs/bpf").join(unique("planted")));
    std::fs::create_dir_all(planted.0.join("programs")).expect("mkdir on bpffs");
    std::fs::hard_link(node.pin.join("programs/prefilter"), planted.0.join("programs/prefilter"))
        .expect("a second name for the pin");
    std::os::unix::fs::symlink(&other.0, planted.0.join("maps")).expect("symlink on bpffs");
    let dir = planted.0.to_str().expect("UTF-8");
    for cmd in ["unload", "down"] {
        let o = sluice(&[cmd, "--pin-dir", dir]);
        assert!(!o.status.success(), "{cmd} refused: {}", text(&o));
        assert!(text(&o).contains("symbolic link"), "{cmd}: {}", text(&o));
        assert!(other.0.join("precious.txt").exists(), "{cmd} followed the symlink");
        assert!(planted.0.join("programs/prefilter").exists(), "{cmd} removed nothing");
    }

    // A program pin where a map pin belongs is refused too; so is a pin dir others may write.
    let misplaced = node.pin.join("maps/not_a_map");
    std::fs::hard_link(node.pin.join("programs/prefilter"), &misplaced).expect("a second name for the pin");
    let o = sluice(&["unload", "--pin-dir", node.pin()]);
    assert!(!o.status.success() && text(&o).contains("expected a Map"), "{}", text(&o));
    std::fs::remove_file(&misplaced).expect("unlink");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&node.pin, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let o = sluice(&["unload", "--pin-dir", node.pin()]);
    assert!(!o.status.success() && text(&o).contains("writable by group or others"), "{}", text(&o));
    std::fs::set_permissions(&node.pin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let o = sluice(&["unload", "--pin-dir", node.pin()]);
    assert!(o.status.success(), "a clean pin dir unloads: {}", text(&o));
}

/// "`down` with an empty pin dir removed `sluice_host`/`sluice_vxlan` that belonged to
/// another node in the same namespace" (issue 16).
#[test]
fn down_removes_no_device_it_did_not_create() {
    if !netns::gate("down_removes_no_device_it_did_not_create") {
        return;
    }
    netns::remove_stale_namespaces("sl-safety");
    let ns = netns::Netns::new(netns::unique("sl-safety"));
    ns.ip(&["link", "add", "sluice_host", "type", "veth", "peer", "name", "sluice_net"]);
    ns.ip(&["link", "add", "sluice_vxlan", "type", "vxlan", "id", "42", "dstport", "4789"]);
    let pin = Tree(PathBuf::from("/sys/fs/bpf").join(unique("emptydown")));
    std::fs::create_dir(&pin.0).expect("mkdir on bpffs");
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(["down", "--pin-dir"])
        .arg(&pin.0)
        .output()
        .expect("nsenter runs");
    assert!(o.status.success(), "{}", text(&o));
    let links = netns::ip_output(&["-n", &ns.name, "-o", "link", "show"]);
    for dev in ["sluice_host", "sluice_net", "sluice_vxlan"] {
        assert!(links.contains(&format!(" {dev}")), "{dev} was removed: {links}");
    }
}

fn v4(text: &str) -> Prefix {
    let c: sluice::model::Cidr = text.parse().expect("a CIDR");
    sluice::node::prefix_of(&c)
}

/// Listed prefixes the pinned tables do not drop (a listed prefix must be enforced).
fn listed_not_enforced(node: &Node) -> Vec<String> {
    let sys = sluice::sys::kernel();
    let prog = sluice::sys::Program::from_pin(&sys, &node.pin.join("programs/prefilter")).expect("pinned");
    let maps = load::open_prefilter(&sys, &node.pin).expect("pinned maps");
    let set = load::prefilter_set(&maps).expect("listing reads");
    set.v4
        .iter()
        .filter(|(a, _)| {
            prog.test_run(&sluice::sys::TestRunOpts::packet(&udp4(*a))).expect("runs").retval != 1
        })
        .map(|(a, l)| format!("{}/{l}", std::net::Ipv4Addr::from(*a)))
        .collect()
}

/// "SIGKILL between a `prefilter add`'s metadata write and its table write: the prefix is
/// listed, not enforced, and re-adding says "already present"" and "`status` must verify
/// consistency ... and exit non-zero naming the problem" (issue 16). A `prefilter add` and a
/// `prefilter del` are cut short after each of their bpf() calls in turn (every later call
/// fails, as if the process had died there); after each cut no listed prefix goes
/// unenforced (add), `sluice status` says whether the node is consistent, and the next
/// command (another add) leaves a consistent node.
#[test]
fn a_prefilter_change_cut_short_at_any_bpf_call_leaves_a_node_the_next_command_repairs() {
    if !sluice::sys::require_kernel(
        "a_prefilter_change_cut_short_at_any_bpf_call_leaves_a_node_the_next_command_repairs",
    ) {
        return;
    }
    use sluice::sys::fault::FailAfter;
    let node = Node::new("cutshort", &["192.0.2.0/24", "10.7.0.0/16", "2001:db8:1::/48"]);
    node.load();
    let real = sluice::sys::kernel();
    let (x, next) = (v4("10.8.1.0/24"), v4("10.9.0.0/28"));
    let mut failures = Vec::new();
    let mut status_flagged = 0;
    for (what, add, del) in [("add", vec![x], vec![]), ("del", vec![], vec![x])] {
        for n in 0.. {
            if what == "del" {
                load::prefilter_change(&real, &node.pin, &[x], &[]).expect("set up the delete");
            }
            let cut = std::sync::Arc::new(FailAfter::new(real.clone(), n));
            let sys: std::sync::Arc<dyn sluice::sys::Syscall> = cut.clone();
            if load::prefilter_change(&sys, &node.pin, &add, &del).is_ok() {
                eprintln!("prefilter {what}: cut after each of its {n} bpf() calls, all repaired");
                load::prefilter_change(&real, &node.pin, &[], &[x]).expect("reset");
                break;
            }
            if what == "add" {
                for p in listed_not_enforced(&node) {
                    failures.push(format!("{what} cut after {n} calls: {p} listed, not enforced"));
                }
            }
            let consistent = node.check_enforced().is_empty();
            let st = sluice(&["status", "--pin-dir", node.pin()]);
            if st.status.success() != consistent {
                failures.push(format!(
                    "{what} cut after {n}: status exit {:?}, consistent {consistent}: {}",
                    st.status,
                    text(&st)
                ));
            }
            status_flagged += usize::from(!consistent && text(&st).contains("inconsistent"));
            load::prefilter_change(&real, &node.pin, &[next], &[]).expect("the next command");
            for p in node.check_enforced() {
                failures.push(format!("{what} cut after {n} calls, then add {next:?}: {p}"));
            }
            load::prefilter_change(&real, &node.pin, &[], &[x, next]).expect("reset");
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(
        status_flagged > 0,
        "some cut left a state status calls inconsistent (else the test proves nothing)"
    );
}

/// "SIGKILL at pin time: `status` reports a half-pinned node (0 or 6 programs) with exit 0"
/// (issue 16).
#[test]
fn status_names_a_half_pinned_node_and_exits_non_zero() {
    if !sluice::sys::require_kernel("status_names_a_half_pinned_node_and_exits_non_zero") {
        return;
    }
    let node = Node::new("halfpinned", &["192.0.2.0/24"]);
    node.load();
    let o = sluice(&["status", "--pin-dir", node.pin()]);
    assert!(o.status.success(), "a whole node is consistent: {}", text(&o));
    std::fs::remove_file(node.pin.join("programs/prefilter")).expect("unpin");
    std::fs::remove_dir(node.pin.join("programs")).expect("rmdir");
    std::fs::remove_file(node.pin.join("maps/pf_v4_l3")).expect("unpin");
    let o = sluice(&["status", "--pin-dir", node.pin()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("maps are pinned but no program"), "{}", text(&o));
}

/// "SIGKILL at pin time: `status` reports a half-pinned node ... with exit 0" (issue 16), and
/// "a journal in the pin dir that the next command ... completes or undoes": the prefilter
/// program is pinned last, so a load killed while pinning leaves no `programs/prefilter`;
/// `status` names the node half-pinned and the next `load` loads it whole.
#[test]
fn a_load_cut_short_while_pinning_is_redone_by_the_next_load() {
    if !sluice::sys::require_kernel("a_load_cut_short_while_pinning_is_redone_by_the_next_load") {
        return;
    }
    let node = Node::new("halfload", &["192.0.2.0/24", "2001:db8:2::/48"]);
    // What each kill point while pinning leaves: some maps, no program; every map, no program.
    for (round, maps_left) in [&["pf_cidrs", "pf_meta"][..], &[][..]].iter().enumerate() {
        node.load();
        std::fs::remove_file(node.pin.join("programs/prefilter")).expect("unpin");
        for entry in std::fs::read_dir(node.pin.join("maps")).expect("maps").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !maps_left.is_empty() && !maps_left.contains(&name.as_str()) {
                std::fs::remove_file(entry.path()).expect("unpin");
            }
        }
        let o = sluice(&["status", "--pin-dir", node.pin()]);
        assert!(!o.status.success() && text(&o).contains("inconsistent"), "round {round}: {}", text(&o));
        let o = sluice(&["load", node.file(), "--pin-dir", node.pin()]);
        assert!(o.status.success(), "round {round}: the next load: {}", text(&o));
        let o = sluice(&["status", "--pin-dir", node.pin()]);
        assert!(o.status.success(), "round {round}: whole again: {}", text(&o));
        assert_eq!(node.listed(), ["192.0.2.0/24", "2001:db8:2::/48"], "round {round}");
        let wrong = node.check_enforced();
        assert!(wrong.is_empty(), "round {round}: {wrong:?}");
        let o = sluice(&["unload", "--pin-dir", node.pin()]);
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// The other half of "devices and routes are removed only when the node's records say they
/// are ours": what forwarding created (the router pair, the overlay device, the endpoints'
/// host routes) is recorded, and `down` removes exactly that; the endpoint's own veth stays.
/// "`down` and reshapes leave per-endpoint /32 routes behind" (issue 16).
#[test]
fn down_removes_the_devices_and_routes_forwarding_recorded() {
    if !netns::gate("down_removes_the_devices_and_routes_forwarding_recorded") {
        return;
    }
    netns::remove_stale_namespaces("sl-owned");
    let ns = netns::Netns::new(netns::unique("sl-owned"));
    ns.ip(&["link", "add", "lxcO", "type", "veth", "peer", "name", "lxcO_peer"]);
    ns.ip(&["link", "set", "lxcO", "up"]);
    ns.ip(&["link", "set", "lxcO_peer", "up"]);
    let cfg = sluice::model::parse_str(
        "apiVersion: sluice.dev/v1\nkind: Node\nmetadata:\n  name: n\nspec:\n  router: {ipv4: 10.77.0.1}\n  overlay:\n    local: 172.31.0.1\n    peers:\n      - name: p\n        address: 172.31.0.2\n        prefixes: [10.78.0.0/24]\n  endpoints:\n    - name: ep\n      interface: lxcO\n      ipv4: 10.77.0.10\n      ipv6: \"fd00:77::10\"\n      labels: {app: ep}\n",
        "owned.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plan = sluice::node::plan(&cfg).expect("plans");
    let sys = sluice::sys::kernel();
    let pin = Tree(PathBuf::from("/sys/fs/bpf").join(unique("owned")));
    ns.enter(|| {
        load::load_and_pin(&sys, &plan, &pin.0).expect("loads");
        sluice::node::forward::sync(&sys, &cfg, &pin.0).expect("forwarding");
    });
    let links = || netns::ip_output(&["-n", &ns.name, "-o", "link", "show"]);
    let routes = || {
        netns::ip_output(&["-n", &ns.name, "route", "show"])
            + &netns::ip_output(&["-n", &ns.name, "-6", "route", "show"])
    };
    for dev in ["sluice_host", "sluice_vxlan"] {
        assert!(links().contains(&format!(" {dev}")), "{dev} created: {}", links());
    }
    assert!(routes().contains("10.77.0.10 dev lxcO"), "{}", routes());
    let report = ns.enter(|| sluice::node::wire::down(&sys, &pin.0).unwrap_or_else(|e| panic!("{e}")));
    let (links, routes) = (links(), routes());
    for dev in ["sluice_host", "sluice_net", "sluice_vxlan"] {
        assert!(!links.contains(&format!(" {dev}")), "{dev} removed: {links}\n{report}");
    }
    assert!(links.contains(" lxcO"), "the endpoint's veth is not ours: {links}");
    for route in ["10.77.0.10", "fd00:77::10"] {
        assert!(!routes.contains(route), "{route}'s host route removed: {routes}\n{report}");
    }
    assert!(!pin.0.exists(), "the pin dir is gone: {report}");
}

/// A `load` cut short after each of its bpf() calls in turn (every later call fails): the
/// next `load` leaves a whole, consistent node, and `status` in between never calls a
/// half-pinned node healthy.
#[test]
fn a_load_cut_short_at_any_bpf_call_is_finished_by_the_next_load() {
    if !sluice::sys::require_kernel("a_load_cut_short_at_any_bpf_call_is_finished_by_the_next_load") {
        return;
    }
    use sluice::sys::fault::FailAfter;
    let node = Node::new("loadcut", &["192.0.2.0/24", "2001:db8:3::/48"]);
    let cfg = sluice::model::load_file(&node.file).expect("parses");
    let plan = sluice::node::plan(&cfg).expect("plans");
    let mut failures = Vec::new();
    for n in 0.. {
        let cut: std::sync::Arc<dyn sluice::sys::Syscall> =
            std::sync::Arc::new(FailAfter::new(sluice::sys::kernel(), n));
        let done = load::load_and_pin(&cut, &plan, &node.pin).is_ok();
        let st = sluice(&["status", "--pin-dir", node.pin()]);
        let half = node.pin.join("maps").exists() && !node.pin.join("programs/prefilter").exists();
        if half && st.status.success() {
            failures.push(format!("cut after {n}: status calls a half-pinned node healthy: {}", text(&st)));
        }
        if !done {
            node.load();
        }
        let st = sluice(&["status", "--pin-dir", node.pin()]);
        if !st.status.success() || node.listed() != ["192.0.2.0/24", "2001:db8:3::/48"] {
            failures.push(format!("cut after {n}, then load: {}", text(&st)));
        }
        let o = sluice(&["unload", "--pin-dir", node.pin()]);
        assert!(o.status.success(), "{}", text(&o));
        if done {
            eprintln!("load: cut after each of its {n} bpf() calls, the next load finished it");
            break;
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A seam that records the index of every call that writes a map.
#[derive(Debug, Clone, Default)]
struct WriteLog {
    inner: Option<std::sync::Arc<dyn sluice::sys::Syscall>>,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    at: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl sluice::sys::Syscall for WriteLog {
    unsafe fn bpf(&self, cmd: sluice::sys::BpfCmd, attr: &mut [u8]) -> Result<i64, sluice::sys::Errno> {
        use sluice::sys::BpfCmd::{MapDeleteBatch, MapDeleteElem, MapUpdateBatch, MapUpdateElem};
        let i = self.calls.fetch_add(1, Ordering::Relaxed);
        if matches!(cmd, MapUpdateElem | MapUpdateBatch | MapDeleteElem | MapDeleteBatch) {
            self.at.lock().expect("log").push(i);
        }
        let inner = self.inner.as_ref().expect("a seam to forward to");
        // SAFETY: forwarded caller contract (`Syscall::bpf`).
        unsafe { inner.bpf(cmd, attr) }
    }
}

/// The writes that would still bring the node at `pin` to `cfg` (empty: in step).
fn writes_left(cfg: &sluice::model::NodeConfig, pin: &Path) -> usize {
    let sys = sluice::sys::kernel();
    let plan = sluice::node::plan(cfg).expect("plans");
    let mut maps = std::collections::BTreeMap::new();
    for def in plan.objects.iter().flat_map(|o| &o.maps) {
        if !maps.contains_key(def.name) {
            maps.insert(def.name, load::open_pinned_map(&sys, pin, def).expect("pinned"));
        }
    }
    // What the kernel holds, not what this process last wrote.
    sluice::node::update::forget_mirrors();
    let writes = sluice::node::update::map_writes(cfg, &maps).expect("computes");
    sluice::node::update::count_writes(&writes.writes).total()
}

/// An in-place update (`sluice load` of a changed node file, and every daemon apply) cut
/// short just before and just after each bpf() call that writes a map: the next update
/// brings the node to the config (no write left to make), and the prefilter's tables agree
/// with its listing.
#[test]
fn an_update_cut_short_around_each_write_is_finished_by_the_next_update() {
    if !sluice::sys::require_kernel("an_update_cut_short_around_each_write_is_finished_by_the_next_update") {
        return;
    }
    use sluice::sys::fault::FailAfter;
    let fixture = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/default-node.yaml"))
        .expect("the default node");
    let before = sluice::model::parse_str(&fixture, "before.yaml").unwrap_or_else(|e| panic!("{e}"));
    // The same programs, other map contents: a deny prefix more, a policy port changed.
    let changed = fixture
        .replace("      - 10.13.0.0/16\n", "      - 10.13.0.0/16\n      - 10.14.7.0/24\n")
        .replace("{port: \"443\", protocol: TCP}", "{port: \"8443\", protocol: TCP}");
    assert_ne!(changed, fixture, "the fixture has the lines this test changes");
    let after = sluice::model::parse_str(&changed, "after.yaml").unwrap_or_else(|e| panic!("{e}"));
    let node = Node::new("updatecut", &[]);
    let sys = sluice::sys::kernel();
    load::load_and_pin(&sys, &sluice::node::plan(&before).expect("plans"), &node.pin).expect("loads");
    let plan = sluice::node::plan(&after).expect("plans");
    let mut failures = Vec::new();
    let plan_before = sluice::node::plan(&before).expect("plans");
    // An update reads far more than it writes (over 100,000 bpf() calls, nearly all
    // lookups): a cut among the reads writes nothing, so the cuts are made just before and
    // just after each call that writes.
    let log = WriteLog { inner: Some(sys.clone()), ..WriteLog::default() };
    let logging: std::sync::Arc<dyn sluice::sys::Syscall> = std::sync::Arc::new(log.clone());
    sluice::node::update::update_pinned(&logging, &after, &plan, &node.pin).expect("updates");
    let total = log.calls.load(Ordering::Relaxed);
    let mut cuts: Vec<u64> = log.at.lock().expect("log").iter().flat_map(|&i| [i, i + 1]).collect();
    cuts.dedup();
    assert!(!cuts.is_empty(), "the update writes");
    sluice::node::update::update_pinned(&sys, &before, &plan_before, &node.pin).expect("back");
    eprintln!("update: {total} bpf() calls, {} cut points around its writes", cuts.len());
    for n in cuts {
        let cut: std::sync::Arc<dyn sluice::sys::Syscall> =
            std::sync::Arc::new(FailAfter::new(sys.clone(), n));
        let done = sluice::node::update::update_pinned(&cut, &after, &plan, &node.pin).is_ok();
        if !done {
            sluice::node::update::update_pinned(&sys, &after, &plan, &node.pin).expect("the next update");
        }
        let left = writes_left(&after, &node.pin);
        if left != 0 {
            failures.push(format!("cut after {n}, then update: {left} writes still to make"));
        }
        let maps = load::open_prefilter(&sys, &node.pin).expect("pinned");
        let problems =
            load::prefilter_problems_of(|m| maps.get(m).map(|x| x as &dyn MapView)).expect("reads");
        if !problems.is_empty() {
            failures.push(format!("cut after {n}: {problems:?}"));
        }
        // Back to the first config for the next cut.
        sluice::node::update::update_pinned(&sys, &before, &plan_before, &node.pin).expect("back");
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A seam that records the index of every call that changes the kernel's state (a map
/// write, a map or program created, a pin, a link change).
#[derive(Debug, Clone, Default)]
struct ChangeLog {
    inner: Option<std::sync::Arc<dyn sluice::sys::Syscall>>,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    at: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl sluice::sys::Syscall for ChangeLog {
    unsafe fn bpf(&self, cmd: sluice::sys::BpfCmd, attr: &mut [u8]) -> Result<i64, sluice::sys::Errno> {
        use sluice::sys::BpfCmd::*;
        let i = self.calls.fetch_add(1, Ordering::Relaxed);
        if matches!(
            cmd,
            MapUpdateElem
                | MapUpdateBatch
                | MapDeleteElem
                | MapDeleteBatch
                | MapCreate
                | ProgLoad
                | ObjPin
                | LinkCreate
                | LinkUpdate
                | LinkDetach
        ) {
            self.at.lock().expect("log").push(i);
        }
        let inner = self.inner.as_ref().expect("a seam to forward to");
        // SAFETY: forwarded caller contract (`Syscall::bpf`).
        unsafe { inner.bpf(cmd, attr) }
    }
}

/// A reshape (an endpoint added: new programs, new map entries) cut short just before and
/// just after each bpf() call that changes the kernel: the next reshape of the same config
/// finishes it (the pinned programs are the plan's, no map write is left to make) and
/// `status` finds no problem.
#[test]
fn a_reshape_cut_short_at_each_change_is_finished_by_the_next_reshape() {
    if !sluice::sys::require_kernel("a_reshape_cut_short_at_each_change_is_finished_by_the_next_reshape") {
        return;
    }
    use sluice::node::reshape::reshape;
    use sluice::sys::fault::FailAfter;
    let fixture = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/default-node.yaml"))
        .expect("the default node");
    let db = "    - name: db\n      interface: lxc-db\n      namespace: shop\n      ipv4: 10.0.1.30\n      labels: {app: db, tier: data}\n";
    assert!(fixture.contains(db), "the fixture has the endpoint this test removes");
    let before =
        sluice::model::parse_str(&fixture.replace(db, ""), "before.yaml").unwrap_or_else(|e| panic!("{e}"));
    let after = sluice::model::parse_str(&fixture, "after.yaml").unwrap_or_else(|e| panic!("{e}"));
    let (plan_before, plan_after) =
        (sluice::node::plan(&before).expect("plans"), sluice::node::plan(&after).expect("plans"));
    let node = Node::new("reshapecut", &[]);
    let sys = sluice::sys::kernel();
    load::load_and_pin(&sys, &plan_before, &node.pin).expect("loads");
    let log = ChangeLog { inner: Some(sys.clone()), ..ChangeLog::default() };
    let logging: std::sync::Arc<dyn sluice::sys::Syscall> = std::sync::Arc::new(log.clone());
    reshape(&logging, &after, &plan_after, &node.pin, None).expect("reshapes");
    let total = log.calls.load(Ordering::Relaxed);
    let mut cuts: Vec<u64> = log.at.lock().expect("log").iter().flat_map(|&i| [i, i + 1]).collect();
    cuts.dedup();
    assert!(cuts.len() > 4, "the reshape loads, pins and writes");
    reshape(&sys, &before, &plan_before, &node.pin, None).expect("back");
    eprintln!("reshape: {total} bpf() calls, {} cut points around its changes", cuts.len());
    let wanted: std::collections::BTreeSet<String> =
        plan_after.objects.iter().map(|o| o.name.clone()).collect();
    let mut failures = Vec::new();
    for n in cuts {
        let cut: std::sync::Arc<dyn sluice::sys::Syscall> =
            std::sync::Arc::new(FailAfter::new(sys.clone(), n));
        if reshape(&cut, &after, &plan_after, &node.pin, None).is_err() {
            if let Err(e) = reshape(&sys, &after, &plan_after, &node.pin, None) {
                failures.push(format!("cut after {n}: the next reshape failed: {e}"));
                continue;
            }
        }
        let pinned: std::collections::BTreeSet<String> = std::fs::read_dir(node.pin.join("programs"))
            .expect("programs")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if pinned != wanted {
            failures.push(format!("cut after {n}: programs {pinned:?}, the plan has {wanted:?}"));
        }
        let left = writes_left(&after, &node.pin);
        if left != 0 {
            failures.push(format!("cut after {n}, then reshape: {left} writes still to make"));
        }
        let problems = sluice::node::wire::status(&sys, &node.pin).expect("status").problems;
        if !problems.is_empty() {
            failures.push(format!("cut after {n}: status: {problems:?}"));
        }
        reshape(&sys, &before, &plan_before, &node.pin, None).expect("back to the first config");
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
