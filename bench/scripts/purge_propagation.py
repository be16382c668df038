#!/usr/bin/env python3
"""Cluster-wide purge figures with real fanz-node processes on 127.0.0.1:

1. propagation: for each cluster size in --sizes, --purges purges (wait=all) of
   distinct tags from random nodes; the time until every member applied each one
   (the node's own `slowest_ms`) and the client's wait=all latency, p50 and p99;
2. sustained purges per second (wait=all, --clients concurrent clients, for
   --seconds) in a 3-node cluster holding --entries tagged KV entries; with
   --bench target/release/fanz-bench the clients are fanz-bench's closed-loop
   purgers (a third of them at each node) instead of Python threads, which cannot
   keep more than a few thousand purges a second in flight;
3. catch-up: SIGSTOP one node of 3, make --missed purges at another (wait=none),
   SIGCONT it, and time until the last of them is applied everywhere.

Usage: bench/scripts/purge_propagation.py [--binary target/release/fanz-node]
Every process and directory it starts is removed at the end.
"""
import argparse, json, os, random, shutil, signal, tempfile, threading, time

from fanz_cluster import cluster, converged, request


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else None


def purge(node, body, wait="all"):
    status, raw = request(node.admin, "POST", f"/purge?wait={wait}", body=body)
    # 504: made, but not applied by every member in time (the report says who).
    if status not in (200, 202, 504):
        raise SystemExit(f"purge failed: {status} {raw[:200]!r}")
    return json.loads(raw)


def purges_applied(node):
    status, raw = request(node.admin, "GET", "/metrics")
    for line in raw.decode().splitlines():
        if line.startswith("fanz_purges_total "):
            return float(line.split()[1])
    raise SystemExit(f"no fanz_purges_total on {node.name}")


def bench_purges(a, nodes, tags):
    """Closed-loop purgers from fanz-bench, a share at each node, for a.seconds:
    (successful purges per second in all, purges that failed or were incomplete)."""
    import subprocess
    shares = [a.clients // len(nodes) + (1 if k < a.clients % len(nodes) else 0) for k in range(len(nodes))]
    procs = []
    for node, share in zip(nodes, shares):
        if share == 0:
            continue
        procs.append(subprocess.Popen(
            [a.bench, "--url", f"http://127.0.0.1:{node.admin}/", "--connections", "0",
             "--purge-connections", str(share), "--admin", f"127.0.0.1:{node.admin}",
             "--purge-tags", str(tags), "--duration", str(int(a.seconds)), "--warmup", "1", "--json"],
            stdout=subprocess.PIPE, text=True))
    rate, failed = 0.0, 0
    for p in procs:
        out, _ = p.communicate(timeout=a.seconds + 60)
        purge = json.loads(out.strip().splitlines()[-1])["purge"]
        rate += purge["per_s"]
        failed += purge["failed"]
    return rate, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/fanz-node")
    ap.add_argument("--sizes", default="3,5,10")
    ap.add_argument("--purges", type=int, default=300)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--missed", type=int, default=10_000)
    ap.add_argument("--bench", help="fanz-bench binary: drive the sustained phase with it")
    ap.add_argument("--skip-propagation", action="store_true", help="only the sustained and catch-up phases")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if any(s < 2 or s > 32 for s in sizes) or a.purges < 1 or a.entries < 0 or a.missed < 1:
        raise SystemExit("sizes must be 2..32; purges and missed at least 1")
    work = tempfile.mkdtemp(prefix="fanz-purge-")
    everyone = []
    results = {}
    rng = random.Random(7)
    try:
        for n in ([] if a.skip_propagation else sizes):
            nodes = cluster(a.binary, work, n, [], f"p{n}")
            everyone += nodes
            for x in nodes:
                x.start()
            if converged(nodes) is None:
                raise SystemExit(f"{n} nodes did not converge")
            time.sleep(1)
            slowest, client = [], []
            incomplete = 0
            for i in range(a.purges):
                at = rng.choice(nodes)
                started = time.monotonic()
                answer = purge(at, json.dumps({"tags": [f"tag-{n}-{i}"]}))
                client.append((time.monotonic() - started) * 1000)
                c = answer["cluster"]
                if not c["complete"]:
                    incomplete += 1
                slowest.append(c["slowest_ms"])
            results[f"propagation_{n}"] = {
                "purges": a.purges, "incomplete": incomplete,
                "all_applied_p50_ms": pct(slowest, 0.5), "all_applied_p99_ms": pct(slowest, 0.99),
                "client_wait_all_p50_ms": pct(client, 0.5), "client_wait_all_p99_ms": pct(client, 0.99),
            }
            print(f"{n} nodes: every member applied a purge in p50 {pct(slowest, 0.5):.2f} ms, "
                  f"p99 {pct(slowest, 0.99):.2f} ms; client wait=all p50 {pct(client, 0.5):.2f} ms, "
                  f"p99 {pct(client, 0.99):.2f} ms; {incomplete} incomplete")
            for x in nodes:
                x.stop()

        nodes = cluster(a.binary, work, 3, [], "s", memory="512MiB")
        everyone += nodes
        for x in nodes:
            x.start()
        if converged(nodes) is None:
            raise SystemExit("3 nodes did not converge")
        tags = max(1, a.entries // 100)
        fill_started = time.monotonic()

        def fill(lo, hi):
            for i in range(lo, hi):
                node = nodes[i % 3]
                import http.client
                c = http.client.HTTPConnection("127.0.0.1", node.http, timeout=30)
                c.request("PUT", f"/kv/e{i}", body=b"x" * 64, headers={"surrogate-key": f"t{i % tags}"})
                c.getresponse().read()
                c.close()
        step = (a.entries + 7) // 8
        threads = [threading.Thread(target=fill, args=(k * step, min(a.entries, (k + 1) * step))) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"filled {a.entries} tagged entries ({tags} tags) in {time.monotonic() - fill_started:.1f} s")
        done = [0] * a.clients
        stop_at = time.monotonic() + a.seconds
        if a.bench:
            rate, failed = bench_purges(a, nodes, tags)
            results["sustained"] = {"entries": a.entries, "tags": tags, "clients": a.clients,
                                    "driver": "fanz-bench", "purges_per_s": rate, "failed": failed}
            print(f"sustained: {rate:.0f} purges/s (wait=all, {a.clients} fanz-bench purgers, "
                  f"{a.entries} tagged entries in the cluster; {failed} failed or incomplete)")
            a.clients = 0

        def purger(k):
            r = random.Random(k)
            while time.monotonic() < stop_at:
                purge(nodes[r.randrange(3)], json.dumps({"tags": [f"t{r.randrange(tags)}"]}))
                done[k] += 1
        if a.clients:
            threads = [threading.Thread(target=purger, args=(k,)) for k in range(a.clients)]
            began = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = sum(done) / (time.monotonic() - began)
            results["sustained"] = {"entries": a.entries, "tags": tags, "clients": a.clients, "purges_per_s": rate}
            print(f"sustained: {rate:.0f} purges/s (wait=all, {a.clients} clients, {a.entries} tagged entries in the cluster)")

        paused, origin = nodes[2], nodes[0]
        baseline = purges_applied(paused)
        os.kill(paused.proc.pid, signal.SIGSTOP)
        last = None
        issue_started = time.monotonic()
        for i in range(a.missed):
            last = purge(origin, json.dumps({"keys": [f"missed-{i}"]}), wait="none")["purge_id"]
        issued = time.monotonic() - issue_started
        os.kill(paused.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        caught = None
        while time.monotonic() - resumed < 120:
            # Every purge the stopped node missed is counted there once applied.
            if purges_applied(paused) >= baseline + a.missed:
                caught = time.monotonic() - resumed
                break
            time.sleep(0.02)
        status, raw = request(origin.admin, "GET", f"/purge/{last}")
        last_report = json.loads(raw) if status == 200 else None
        results["catch_up"] = {"missed": a.missed, "issued_in_s": issued, "caught_up_after_s": caught,
                               "last_purge_complete": bool(last_report and last_report["complete"])}
        print(f"catch-up: {a.missed} purges made while a node was stopped ({issued:.1f} s to issue); "
              f"all applied there {caught if caught is None else round(caught, 3)} s after it resumed")
        print(json.dumps(results))
    finally:
        for x in everyone:
            if x.proc and x.proc.poll() is None:
                try:
                    os.kill(x.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
            x.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
