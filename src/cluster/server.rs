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
        let client_port = free_port().map_err(|e| e.to_string())?;
        let peer_port = free_port().map_err(|e| e.to_string())?;
        let mut server = EtcdServer { child: None, client_port, peer_port, data_dir };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client(&self) -> Client {
        Client::new(&[self.url()]).expect("a well-formed loopback URL")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.data_dir.with_extension("log")).map_err(|e| e.to_string())?;
        let child = Command::new("etcd")
            .args(["--name", "sluice"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sluice={peer}")])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting etcd: {e}"))?;
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if client.range(b"sluice/", true).is_ok() {
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
