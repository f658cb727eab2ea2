//! A throwaway etcd server for tests, the cluster demo and the scale benchmark.
//!
//! Contract: [`EtcdServer::start`] runs the `etcd` binary (Debian's `etcd-server` package)
//! on two free loopback ports with its own data directory under the system temp dir, waits
//! until it answers, and returns a guard that kills it and removes the directory when dropped
//! (also while a test panics). [`EtcdServer::stop`] and [`EtcdServer::restart`] stop it and
//! start it again on the same ports and data, for fault tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::etcd::Client;

/// How to get the binary, said wherever it is missing.
pub const INSTALL_HINT: &str =
    "etcd is not installed: `apt-get install etcd-server` (Debian/Ubuntu) puts `etcd` on PATH";

/// A running etcd, killed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    pub data_dir: PathBuf,
    /// The address it listens on (loopback unless [`EtcdServer::start_in_netns`]).
    pub host: std::net::Ipv4Addr,
    /// The network namespace (`/run/netns/<name>`) it runs in, if not the caller's.
    netns: Option<String>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether an `etcd` binary is on PATH.
pub fn available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl EtcdServer {
    /// Starts etcd; `tag` names its data directory (with the pid and a counter).
    pub fn start(tag: &str) -> Result<EtcdServer, String> {
        EtcdServer::start_in_netns(tag, None)
    }

    /// Starts etcd inside the network namespace `/run/netns/<name>`, listening on `host`
    /// (an address of that namespace), with ports 2379 and 2380 (the namespace is the
    /// caller's own). Its readiness is checked from inside the namespace.
    pub fn start_in_netns(
        tag: &str,
        netns: Option<(&str, std::net::Ipv4Addr)>,
    ) -> Result<EtcdServer, String> {
        if !available() {
            return Err(INSTALL_HINT.to_owned());
        }
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let data_dir = std::env::temp_dir().join(format!(
            "sluice-etcd-{tag}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let (client_port, peer_port, host) = match netns {
            Some((_, host)) => (2379, 2380, host),
            None => (
                free_port().map_err(|e| e.to_string())?,
                free_port().map_err(|e| e.to_string())?,
                std::net::Ipv4Addr::LOCALHOST,
            ),
        };
        let netns = netns.map(|(name, _)| name.to_owned());
        let mut server = EtcdServer { child: None, client_port, peer_port, data_dir, host, netns };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    pub fn client(&self) -> Client {
        Client::new(&[self.url()]).expect("a well-formed loopback URL")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let client = self.url();
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let log = std::fs::File::create(self.data_dir.with_extension("log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("etcd");
        if let Some(name) = &self.netns {
            let path = format!("/run/netns/{name}");
            let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: between fork and exec the closure only calls setns(2), which is
            // async-signal-safe; `file` stays open until spawn returns.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = self.configure(&mut cmd, &client, &peer, log).spawn();
            drop(file);
            self.child = Some(child.map_err(|e| format!("starting etcd: {e}"))?);
            return self.wait_ready(true);
        }
        let child = self
            .configure(&mut cmd, &client, &peer, log)
            .spawn()
            .map_err(|e| format!("starting etcd: {e}"))?;
        self.child = Some(child);
        self.wait_ready(false)
    }

    fn configure<'c>(
        &self,
        cmd: &'c mut Command,
        client: &str,
        peer: &str,
        log: std::fs::File,
    ) -> &'c mut Command {
        cmd.args(["--name", "sluice"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", client, "--advertise-client-urls", client])
            .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("sluice={peer}")])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
    }

    /// Waits until etcd answers (from inside its namespace when `in_netns`).
    fn wait_ready(&mut self, in_netns: bool) -> Result<(), String> {
        let client = self.client();
        let netns = self.netns.clone();
        let probe = move || {
            if in_netns {
                let name = netns.clone().unwrap_or_default();
                let client = client.clone();
                std::thread::spawn(move || {
                    let Ok(file) = std::fs::File::open(format!("/run/netns/{name}")) else { return false };
                    // setns changes only this new thread.
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                        && client.range(b"sluice/", true).is_ok()
                })
                .join()
                .unwrap_or(false)
            } else {
                client.range(b"sluice/", true).is_ok()
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if probe() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "etcd exited with {status}; log: {}",
                        self.data_dir.with_extension("log").display()
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("etcd did not answer within 20 s".to_owned())
    }

    /// Kills etcd (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(self.data_dir.with_extension("log"));
    }
}
