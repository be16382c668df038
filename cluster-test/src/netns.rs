//! The test network: one Linux network namespace per node, each joined by a veth
//! pair to a bridge in the harness's namespace, so the harness (the workload's
//! client) reaches every node and network faults are real ones, made with nftables
//! inside a node's namespace:
//!
//! - a partition drops every packet between two groups of nodes (the harness can
//!   still reach both sides, as clients on either side of a real split could);
//! - loss drops a share of the packets a node sends to other nodes.
//!
//! Latency needs the kernel's `netem` queueing discipline; where the kernel lacks it
//! (this project's CI kernel does), [`Fabric::netem_available`] says so and the
//! scenario that needs it is skipped with a visible message.
//!
//! Everything is named `fzt<tag>...`; [`Fabric`]'s drop removes its namespaces and
//! bridge, and [`sweep`] removes any left by a harness that was SIGKILLed.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{bail, Context};

/// Prefix of every namespace and link the harness creates.
const PREFIX: &str = "fzt";
/// The nftables table the faults live in (inside a node's namespace).
const TABLE: &str = "fanz_fault";

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_input(program, args, None)
}

/// Runs `program`, feeding it `input` on stdin if any; its stderr in the error.
fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (is iproute2/nftables installed?)"))?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            input.map(|i| format!("\ninput:\n{i}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// One run's namespaces and bridge.
#[derive(Debug)]
pub struct Fabric {
    tag: String,
    subnet: [u8; 3],
    nodes: usize,
    created: Vec<String>,
    bridge_up: bool,
}

impl Fabric {
    /// Whether namespaces can be made here (root, iproute2 and nftables present).
    pub fn available() -> Result<(), String> {
        let probe = format!("{PREFIX}probe{}", std::process::id() % 10_000);
        run("ip", &["netns", "add", &probe]).map_err(|e| format!("{e:#}"))?;
        let nft = run("ip", &["netns", "exec", &probe, "nft", "list", "tables"]);
        let _ = run("ip", &["netns", "del", &probe]);
        nft.map_err(|e| format!("nftables: {e:#}"))
    }

    /// Creates `nodes` namespaces, the bridge and the links.
    pub fn create(nodes: usize) -> anyhow::Result<Self> {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        // Distinct per process and per fabric, so concurrent runs do not collide.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag_number = (std::process::id() as u16).wrapping_mul(31).wrapping_add(n);
        let tag = format!("{tag_number:04x}");
        let mut fabric = Self {
            subnet: [10, 150 + (tag_number >> 8) as u8 % 100, tag_number as u8],
            tag,
            nodes,
            created: Vec::new(),
            bridge_up: false,
        };
        fabric.build().context("building the test network")?;
        Ok(fabric)
    }

    fn bridge(&self) -> String {
        format!("{PREFIX}{}b", self.tag)
    }

    /// The namespace of node `index` (0-based).
    pub fn namespace(&self, index: usize) -> String {
        format!("{PREFIX}{}n{}", self.tag, index + 1)
    }

    /// The address of node `index` (0-based).
    pub fn address(&self, index: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + index as u8)
    }

    /// The harness's own address on the bridge.
    pub fn harness_address(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        self.bridge_up = true;
        let gateway = format!("{}/24", self.harness_address());
        run("ip", &["addr", "add", &gateway, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            run("ip", &["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let host_side = format!("{ns}h");
            run(
                "ip",
                &[
                    "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &host_side, "master", &bridge])?;
            run("ip", &["link", "set", &host_side, "up"])?;
            let address = format!("{}/24", self.address(i));
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns.as_str()];
                all.extend_from_slice(args);
                run("ip", &all)
            };
            exec(&["ip", "addr", "add", &address, "dev", "eth0"])?;
            exec(&["ip", "link", "set", "eth0", "up"])?;
            exec(&["ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` inside node `index`'s namespace.
    pub fn command(&self, index: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(index)])
            .arg(program);
        command
    }

    /// Replaces node `index`'s fault rules with `rules` (nftables rule bodies for its
    /// output and input hooks), or removes them when both are empty.
    fn set_rules(&self, index: usize, output: &[String], input: &[String]) -> anyhow::Result<()> {
        let ns = self.namespace(index);
        // Deleting a table that does not exist fails: make sure it exists first.
        let mut script = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
        if !output.is_empty() || !input.is_empty() {
            script.push_str(&format!("table inet {TABLE} {{\n"));
            script.push_str("  chain out { type filter hook output priority 0; policy accept;\n");
            for rule in output {
                script.push_str(&format!("    {rule}\n"));
            }
            script
                .push_str("  }\n  chain in { type filter hook input priority 0; policy accept;\n");
            for rule in input {
                script.push_str(&format!("    {rule}\n"));
            }
            script.push_str("  }\n}\n");
        }
        run_with_input(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&script),
        )
    }

    fn addresses(&self, group: &[usize]) -> String {
        let list: Vec<String> = group.iter().map(|i| self.address(*i).to_string()).collect();
        format!("{{ {} }}", list.join(", "))
    }

    /// Cuts every packet between `side_a` and `side_b` (node indices). The harness
    /// still reaches every node.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) -> anyhow::Result<()> {
        for (mine, theirs) in [(side_a, side_b), (side_b, side_a)] {
            let others = self.addresses(theirs);
            for node in mine {
                self.set_rules(
                    *node,
                    &[format!("ip daddr {others} drop")],
                    &[format!("ip saddr {others} drop")],
                )?;
            }
        }
        Ok(())
    }

    /// Drops `percent`% of the packets each node sends to other nodes (not to the
    /// harness).
    pub fn loss(&self, percent: u8) -> anyhow::Result<()> {
        for node in 0..self.nodes {
            let others: Vec<usize> = (0..self.nodes).filter(|i| *i != node).collect();
            self.set_rules(
                node,
                &[format!(
                    "ip daddr {} numgen random mod 100 < {percent} drop",
                    self.addresses(&others)
                )],
                &[],
            )?;
        }
        Ok(())
    }

    /// Delays every packet a node sends by `delay_ms` ± `jitter_ms` (netem; see
    /// [`Self::netem_available`]).
    pub fn latency(&self, delay_ms: u32, jitter_ms: u32) -> anyhow::Result<()> {
        for node in 0..self.nodes {
            let ns = self.namespace(node);
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "netem",
                    "delay",
                    &format!("{delay_ms}ms"),
                    &format!("{jitter_ms}ms"),
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every fault rule and delay: the network is whole again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for node in 0..self.nodes {
            self.set_rules(node, &[], &[])?;
            // Only present after `latency`; deleting the default qdisc fails harmlessly.
            let _ = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.namespace(node),
                    "tc",
                    "qdisc",
                    "del",
                    "dev",
                    "eth0",
                    "root",
                ],
            );
        }
        Ok(())
    }

    /// Whether the kernel has the `netem` queueing discipline (latency, reordering).
    pub fn netem_available(&self) -> bool {
        let ns = self.namespace(0);
        let added = run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                "1ms",
            ],
        )
        .is_ok();
        if added {
            let _ = run(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "lo", "root",
                ],
            );
        }
        added
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pair in it; the bridge goes last.
        for ns in self.created.drain(..) {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("fanz-cluster-test: removing namespace {ns}: {e:#}");
            }
        }
        if self.bridge_up {
            if let Err(e) = run("ip", &["link", "del", &self.bridge()]) {
                eprintln!(
                    "fanz-cluster-test: removing bridge {}: {e:#}",
                    self.bridge()
                );
            }
        }
    }
}

/// Removes every namespace, bridge and data-directory tmpfs left by a harness that
/// was killed with SIGKILL and could not clean up. Returns what it removed.
pub fn sweep() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let namespaces = Command::new("ip").args(["netns", "list"]).output()?;
    for line in String::from_utf8_lossy(&namespaces.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(PREFIX) {
            run("ip", &["netns", "del", name])?;
            removed.push(format!("namespace {name}"));
        }
    }
    // tmpfs data directories of a harness that could not unmount them
    // (`<tempdir>/nN/data`).
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for path in mounts
        .lines()
        .filter(|l| l.starts_with("tmpfs "))
        .filter_map(|l| l.split_whitespace().nth(1))
    {
        let p = std::path::Path::new(path);
        let node_dir = p
            .parent()
            .and_then(|n| n.file_name())
            .map(|n| n.to_string_lossy());
        let run_dir = p
            .parent()
            .and_then(|n| n.parent())
            .and_then(|r| r.file_name())
            .map(|r| r.to_string_lossy());
        let ours = p.ends_with("data")
            && node_dir.is_some_and(|n| n.starts_with('n') && n[1..].parse::<u32>().is_ok())
            && run_dir.is_some_and(|r| r.starts_with(".tmp"));
        if ours {
            run("umount", &["-l", path])?;
            removed.push(format!("mount {path}"));
        }
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        // "7: fzt1a2bb: <BROADCAST,...": the name is the second field.
        let name = line
            .split(':')
            .nth(1)
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        if name.starts_with(PREFIX) {
            run("ip", &["link", "del", &name])?;
            removed.push(format!("bridge {name}"));
        }
    }
    Ok(removed)
}
