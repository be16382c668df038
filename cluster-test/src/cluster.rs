//! A cluster of real `fanz-node` processes: trust material from the real
//! `fanz-node cluster-init`, one process per node with its own data directory and
//! address, and the process faults done to them (SIGKILL and restart with the disk
//! tier kept, SIGSTOP/SIGCONT, SIGTERM and restart, a full disk). Every process is
//! killed, and every mount removed, on drop.
//!
//! Placement: each node in its own network namespace ([`crate::netns`]) when the
//! harness can make them (root, iproute2, nftables), so network faults are real;
//! otherwise each node on its own 127.0.0.x address, and the scenarios that need
//! network faults are skipped with a message saying so.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::netns::Fabric;

/// The admin token of every test cluster.
pub const TOKEN: &str = "cluster-test-token";

/// Gossip timings: a failure is detected in about 2 s; a 1 s pause is not one.
const FAST_GOSSIP: [&str; 4] = [
    "--gossip-probe-period",
    "200ms",
    "--gossip-suspicion",
    "1500ms",
];

/// Where the workspace's binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `fanz-node`.
    pub node: PathBuf,
    /// `fanz-bench` (its `origin`).
    pub bench: PathBuf,
}

impl Binaries {
    /// Finds them next to this executable (`cargo run`) or one directory up (a test
    /// binary in `target/*/deps`).
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("executable without a directory")?;
        for candidate in [dir, dir.parent().unwrap_or(dir)] {
            let (node, bench) = (candidate.join("fanz-node"), candidate.join("fanz-bench"));
            if node.exists() && bench.exists() {
                return Ok(Self { node, bench });
            }
        }
        bail!(
            "fanz-node and fanz-bench not found next to {}: build the workspace first (cargo build --workspace, or --release for release runs)",
            exe.display()
        )
    }
}

fn free_tcp(ip: IpAddr) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free TCP port on loopback")
}

fn free_udp(ip: IpAddr) -> SocketAddr {
    UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on loopback")
}

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// One network namespace per node (network faults possible).
    Namespaces,
    /// One 127.0.0.x address per node (no network faults).
    Loopback,
}

/// Options of a cluster beyond its size.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Put each node in its own network namespace (falls back to loopback, with a
    /// message, where namespaces cannot be made).
    pub namespaces: bool,
    /// Give this node (0-based) a data directory on a small tmpfs of this many MiB,
    /// so a scenario can fill its disk.
    pub small_disk: Option<(usize, u64)>,
    /// Extra `fanz-node` arguments for every node.
    pub node_args: Vec<String>,
}

/// The origin every node pulls pages from: a real `fanz-bench origin --versioned`
/// on the harness's side of the network. Killed on drop.
#[derive(Debug)]
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl Origin {
    fn start(bench: &Path, ip: IpAddr) -> anyhow::Result<Self> {
        let addr = free_tcp(ip);
        let child = Command::new(bench)
            // A year: longer than any node's tombstone retention, so a soak with a
            // short one (`--max-ttl 4s`...) checks that no purged page outlives it.
            .args(["origin", "--versioned", "--max-age", "31536000"])
            .args(["--addr", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bench.display()))?;
        let origin = Self { addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("the origin did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(origin)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tmpfs mounted on a node's data directory; unmounted on drop.
#[derive(Debug)]
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .context("mount")?;
        if !status.success() {
            bail!(
                "mounting a {mib} MiB tmpfs on {} failed (root needed)",
                at.display()
            );
        }
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
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
    /// Its data directory (disk tier, invalidation log).
    pub data_dir: PathBuf,
    log: PathBuf,
    seeds: String,
    binary: PathBuf,
    /// The namespace it runs in, if any.
    namespace: Option<String>,
    extra_args: Vec<String>,
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
        let mut command = match &self.namespace {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
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
                "--resp-addr",
                "off",
            ]);
        if !self.extra_args.iter().any(|a| a.starts_with("--log-level")) {
            command.args(["--log-level", "warn"]);
        }
        command
            .args(["--memory-capacity", "64MiB", "--disk-capacity", "64MiB"])
            .args(FAST_GOSSIP)
            .args(&self.extra_args);
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
            if std::net::TcpStream::connect_timeout(&self.admin, Duration::from_millis(200)).is_ok()
            {
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

/// The nodes of one run, in a temporary directory removed on drop. Fields drop in
/// order: processes first, then mounts, then the network, then the directory.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `n1` first.
    pub nodes: Vec<Node>,
    /// The origin the nodes pull pages from.
    pub origin: Origin,
    mounts: Vec<Mount>,
    fabric: Option<Fabric>,
    /// Where the nodes run.
    pub placement: Placement,
    /// Why namespaces are not used, when they were asked for and are not.
    pub placement_note: Option<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes from one `cluster-init`, each seeded with all the others.
    pub fn start(binaries: &Binaries, n: usize, options: &ClusterOptions) -> anyhow::Result<Self> {
        if !(1..=16).contains(&n) {
            bail!("--nodes must be from 1 to 16, got {n}");
        }
        let (fabric, placement_note) = if options.namespaces {
            match Fabric::available() {
                Ok(()) => (Some(Fabric::create(n)?), None),
                Err(why) => (None, Some(format!("network namespaces unavailable ({why}): nodes run on 127.0.0.x and network faults are skipped"))),
            }
        } else {
            (None, None)
        };
        let placement = if fabric.is_some() {
            Placement::Namespaces
        } else {
            Placement::Loopback
        };
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
        let ip = |i: usize| -> IpAddr {
            match &fabric {
                Some(f) => IpAddr::V4(f.address(i)),
                None => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i as u8)),
            }
        };
        // In a namespace every port is free; on loopback ask the kernel.
        let port = |i: usize, fixed: u16, udp: bool| -> SocketAddr {
            match (&fabric, udp) {
                (Some(_), _) => SocketAddr::new(ip(i), fixed),
                (None, true) => free_udp(ip(i)),
                (None, false) => free_tcp(ip(i)),
            }
        };
        let origin = Origin::start(
            &binaries.bench,
            match &fabric {
                Some(f) => IpAddr::V4(f.harness_address()),
                None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            },
        )?;
        let mut extra_args = vec!["--origin".to_string(), format!("http://{}", origin.addr)];
        extra_args.extend(options.node_args.iter().cloned());
        let gossip: Vec<SocketAddr> = (0..n).map(|i| port(i, 7946, true)).collect();
        let mut nodes: Vec<Node> = Vec::new();
        let mut mounts = Vec::new();
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
            let data_dir = home.join("data");
            if let Some((small, mib)) = options.small_disk {
                if small == i - 1 {
                    mounts.push(Mount::tmpfs(&data_dir, mib)?);
                }
            }
            nodes.push(Node {
                id: format!("n{i}"),
                http: port(i - 1, 8080, false),
                admin: port(i - 1, 9090, false),
                gossip: gossip[i - 1],
                peer: port(i - 1, 7947, true),
                cluster_dir: dir.path().join("trust").join(format!("node-{i}")),
                data_dir,
                log: home.join("node.log"),
                seeds,
                binary: binaries.node.clone(),
                namespace: fabric.as_ref().map(|f| f.namespace(i - 1)),
                extra_args: extra_args.clone(),
                child: None,
            });
        }
        let mut cluster = Self {
            nodes,
            origin,
            mounts,
            fabric,
            placement,
            placement_note,
            _dir: dir,
        };
        for node in &mut cluster.nodes {
            node.start()?;
        }
        Ok(cluster)
    }

    /// The test network, when the nodes run in namespaces.
    pub fn fabric(&self) -> Option<&Fabric> {
        self.fabric.as_ref()
    }

    /// Whether node `index`'s data directory is on a small tmpfs of its own.
    pub fn has_small_disk(&self, index: usize) -> bool {
        self.mounts
            .iter()
            .any(|m| m.0 == self.nodes[index].data_dir)
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
