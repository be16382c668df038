#!/usr/bin/env python3
"""Idle connections on the Redis protocol: fanz-node's port (resp_addr) against Redis,
in one run. Each server gets N connections that each sent one PING and read its PONG,
then sit idle; the figure is the growth of the server's resident memory per
connection (the kernel's socket buffers are not in it, for either server).

Usage: bench/peers/idle_resp.py [--binary target/release/fanz-node] [--connections 8000]
Runs as root (raises its open-file limit to its hard limit); servers pinned to core 1;
everything on 127.0.0.1, stopped and removed at the end. Installs nothing: needs
redis-server (kv_writes.sh installs it).
"""
import argparse, os, resource, shutil, socket, subprocess, tempfile, time

SETTLE = 5.0  # seconds for freed memory to go back to the system (the node purges after 1 s)


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_port(port, proc):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def per_idle_connection(proc, port, n):
    """Bytes of resident memory per idle connection, and the connections (to close)."""
    time.sleep(SETTLE)
    before = rss(proc.pid)
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"PING\r\n")
        conns.append(c)
    for c in conns:
        got = c.recv(16)
        assert got == b"+PONG\r\n", got
    time.sleep(SETTLE)
    after = rss(proc.pid)
    return (after - before) / n, before, after, conns


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/fanz-node")
    ap.add_argument("--connections", type=int, default=8000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(args.connections, hard - 200)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="fanz-idle-resp-")
    procs = []
    try:
        fanz_port, redis_port = 18971, 18972
        node = subprocess.Popen(
            ["taskset", "-c", "1", args.binary, "--http-addr", "127.0.0.1:18973",
             "--admin-addr", "127.0.0.1:18974", "--h3-addr", "127.0.0.1:18975",
             "--resp-addr", f"127.0.0.1:{fanz_port}", "--data-dir", f"{work}/fanz"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(node)
        redis = subprocess.Popen(
            ["taskset", "-c", "1", "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--maxclients", str(n + 100), "--dir", work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        wait_port(fanz_port, node)
        wait_port(redis_port, redis)
        rows = []
        for name, proc, port in (("fanz-node", node, fanz_port), ("redis", redis, redis_port)):
            per, before, after, conns = per_idle_connection(proc, port, n)
            rows.append((name, per, before, after))
            for c in conns:
                c.close()
        print(f"{n} idle connections each (one PING answered), growth of resident memory:")
        for name, per, before, after in rows:
            print(f"  {name:10} {per:8.0f} bytes per connection  ({before / 1e6:.1f} -> {after / 1e6:.1f} MB)")
        print(f"  fanz-node / redis: {rows[0][1] / rows[1][1]:.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
