//! A cluster of real `fanz-node` processes on loopback: trust material from the real
//! `fanz-node cluster-init`, one process per node with its own data directory and
//! ports, and the faults done to them (SIGKILL and restart with the disk tier kept,
//! SIGSTOP/SIGCONT, SIGTERM and restart). Every process is killed on drop.
//!
//! Nodes share 127.0.0.1 (separate ports). Network faults (partitions, netem) need a
//! network namespace per node and are not run yet.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The admin token of every test cluster.
pub const TOKEN: &str = "cluster-test-token";

/// Gossip timings: a failure is detected in about 1.5 s.
const FAST_GOSSIP: [&str; 4] = ["--gossip-probe-period", "200ms", "--gossip-suspicion", "1s"];

/// Where the workspace's binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `fanz-node`.
    pub node: PathBuf,
}

impl Binaries {
    /// Finds them next to this executable (`cargo run`) or one directory up (a test
    /// binary in `target/*/deps`).
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("executable without a directory")?;
        for candidate in [dir, dir.parent().unwrap_or(dir)] {
            let node = candidate.join("fanz-node");
            if node.exists() {
                return Ok(Self { node });
            }
        }
        bail!(
            "fanz-node not found next to {}: build the workspace first (cargo build --workspace, or --release for release runs)",
            exe.display()
        )
    }
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port on loopback")
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on loopback")
}

/// One node: its addresses and directories stay the same across restarts.
#[derive(Debug)]
pub struct Node {
    /// Node id (`n1`...).
    pub id: String,
    /// Main HTTP address.
    pub http: SocketAddr,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Gossip address.
    pub gossip: SocketAddr,
    peer: SocketAddr,
    cluster_dir: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    seeds: String,
    binary: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The admin API as a client seed.
    pub fn seed(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Starts the process (again) and waits until its admin API answers.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--node-id")
            .arg(&self.id)
            .arg("--cluster-dir")
            .arg(&self.cluster_dir)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--http-addr", &self.http.to_string()])
            .args(["--admin-addr", &self.admin.to_string()])
            .args(["--gossip-addr", &self.gossip.to_string()])
            .args(["--peer-addr", &self.peer.to_string()])
            .args([
                "--admin-token",
                TOKEN,
                "--h3-addr",
                "off",
                "--log-level",
                "warn",
            ])
            .args(["--memory-capacity", "64MiB", "--disk-capacity", "64MiB"])
            .args(FAST_GOSSIP);
        if !self.seeds.is_empty() {
            command.args(["--seeds", &self.seeds]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "{} exited during start-up ({status}); log: {}",
                    self.id,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect(self.admin).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not start within 20 s", self.id)
    }

    /// SIGKILL (the data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            bail!("{} is not running", self.id)
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", child.id());
        }
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit (at most `limit`; then SIGKILL).
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.signal("TERM")?;
        let deadline = Instant::now() + limit;
        while let Some(child) = self.child.as_mut() {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within {limit:?} of SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die cleanly under SIGKILL in
            // some kernels' accounting; harmless otherwise.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// The nodes of one run, in a temporary directory removed on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `n1` first.
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes from one `cluster-init`, each seeded with all the others.
    pub fn start(binaries: &Binaries, n: usize) -> anyhow::Result<Self> {
        if !(1..=16).contains(&n) {
            bail!("--nodes must be from 1 to 16, got {n}");
        }
        let dir = tempfile::tempdir()?;
        let init = Command::new(&binaries.node)
            .arg("cluster-init")
            .arg(dir.path().join("trust"))
            .args(["--nodes", &n.to_string()])
            .output()?;
        if !init.status.success() {
            bail!(
                "cluster-init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        // Every node lists every other as a seed (as a DNS seed list would), so a
        // node restarted after leaving finds the others again.
        let gossip: Vec<SocketAddr> = (0..n).map(|_| free_udp()).collect();
        let mut nodes: Vec<Node> = Vec::new();
        for i in 1..=n {
            let seeds = gossip
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i - 1)
                .map(|(_, g)| g.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let home = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&home)?;
            nodes.push(Node {
                id: format!("n{i}"),
                http: free_tcp(),
                admin: free_tcp(),
                gossip: gossip[i - 1],
                peer: free_udp(),
                cluster_dir: dir.path().join("trust").join(format!("node-{i}")),
                data_dir: home.join("data"),
                log: home.join("node.log"),
                seeds,
                binary: binaries.node.clone(),
                child: None,
            });
        }
        for node in &mut nodes {
            node.start()?;
        }
        Ok(Self { nodes, _dir: dir })
    }

    /// Admin API seeds of every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(Node::seed).collect()
    }

    /// The log of node `index` (for failure reports).
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default()
    }
}
