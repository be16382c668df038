#!/usr/bin/env python3
"""Restart recovery of one fanz-node: fill it, purge a tag, SIGKILL it, restart it on the
same data directory, and report the time to ready, how much of the disk tier came back,
and whether anything purged was served.

Usage: bench/scripts/recovery.py [--binary target/release/fanz-node] [--entries 20000] [--size 1024]
Traffic goes to 127.0.0.1 only; the node and its data directory are removed at the end.
"""
import argparse, http.client, json, os, shutil, signal, socket, subprocess, tempfile, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, data, http_port, admin_port, log):
    proc = subprocess.Popen(
        [binary, "--http-addr", f"127.0.0.1:{http_port}", "--admin-addr", f"127.0.0.1:{admin_port}",
         "--data-dir", data, "--memory-capacity", "512MiB", "--disk-capacity", "1GiB"],
        stdout=subprocess.DEVNULL, stderr=log)
    started = time.monotonic()
    deadline = started + 60
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc, time.monotonic() - started
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"fanz-node exited with {proc.returncode}")
        time.sleep(0.005)
    proc.kill()
    raise SystemExit("fanz-node not ready within 60 s")


def metric(admin_port, name):
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/fanz-node")
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    if args.entries <= 0 or args.size <= 0:
        raise SystemExit("--entries and --size must be positive")
    tmp = tempfile.mkdtemp(prefix="fanz-recovery-")
    data = os.path.join(tmp, "data")
    log = open(os.path.join(tmp, "node.log"), "ab")
    http_port, admin_port = free_port(), free_port()
    proc = None
    try:
        proc, first_ready = start(args.binary, data, http_port, admin_port, log)
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        body = b"v" * args.size
        t0 = time.monotonic()
        for i in range(args.entries):
            tag = "purged" if i % 10 == 0 else "kept"
            conn.request("PUT", f"/kv/e{i}", body=body, headers={"Surrogate-Key": tag, "Cache-Control": "max-age=3600"})
            r = conn.getresponse(); r.read()
            assert r.status in (201, 204), r.status
        fill_s = time.monotonic() - t0
        expected = args.entries * args.size
        deadline = time.monotonic() + 60
        while metric(admin_port, 'fanz_cache_tier_bytes{tier="disk"}') < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
        c.request("POST", "/purge", body=json.dumps({"tags": ["purged"]}))
        assert c.getresponse().status == 200
        proc.send_signal(signal.SIGKILL); proc.wait()
        proc, ready_s = start(args.binary, data, http_port, admin_port, log)
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        recovered = stale = 0
        for i in range(args.entries):
            conn.request("GET", f"/kv/e{i}")
            r = conn.getresponse(); r.read()
            if i % 10 == 0:
                stale += r.status == 200
            else:
                recovered += r.status == 200
        kept = args.entries - (args.entries + 9) // 10
        print(json.dumps({
            "entries": args.entries, "value_bytes": args.size,
            "fill_seconds": round(fill_s, 2), "first_start_ready_seconds": round(first_ready, 3),
            "restart_after_sigkill_ready_seconds": round(ready_s, 3),
            "kept_entries_recovered": f"{recovered}/{kept}",
            "purged_entries_served_after_restart": stale,
        }, indent=2))
    finally:
        if proc and proc.poll() is None:
            proc.kill(); proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
