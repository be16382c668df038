#!/usr/bin/env python3
"""Cluster membership figures with real fanz-node processes on 127.0.0.1:

1. convergence: start N nodes (all seeding from the first) and time until every
   node reports N alive members, for each N in --sizes;
2. failure detection: in a cluster of --detect-nodes, SIGKILL one node (--trials
   times, restarting it in between) and time until every other node reports it down;
   p50 and p99 over the trials;
3. false positives: SIGSTOP one node for --pause seconds, SIGCONT it, and count
   "down" verdicts any node reaches about any member in the --watch seconds after.

Defaults are the node's own (probe period 1 s, suspicion 4 s) unless --probe and
--suspicion are given. Usage:
  bench/scripts/membership.py [--binary target/release/fanz-node] [--sizes 5,20]
Every process and directory it starts is removed at the end.
"""
import argparse, json, os, shutil, signal, tempfile, time

from fanz_cluster import cluster, wait


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/fanz-node")
    ap.add_argument("--sizes", default="5,20")
    ap.add_argument("--detect-nodes", type=int, default=5)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--watch", type=float, default=10.0)
    ap.add_argument("--probe", default=None)
    ap.add_argument("--suspicion", default=None)
    a = ap.parse_args()
    extra = []
    if a.probe:
        extra += ["--gossip-probe-period", a.probe]
    if a.suspicion:
        extra += ["--gossip-suspicion", a.suspicion]
    sizes = [int(s) for s in a.sizes.split(",")]
    if any(s < 2 or s > 64 for s in sizes) or a.trials < 1 or a.detect_nodes < 3:
        raise SystemExit("sizes must be 2..64, trials >= 1, detect-nodes >= 3")
    work = tempfile.mkdtemp(prefix="fanz-membership-")
    everyone = []
    results = {}
    try:
        for n in sizes:
            nodes = cluster(a.binary, work, n, extra, f"c{n}")
            everyone += nodes
            started = time.monotonic()
            for node in nodes:
                node.start()
            names = {x.name for x in nodes}
            took = wait(lambda: all({k for k, v in x.states().items() if v == "alive"} == names for x in nodes), 60)
            total = time.monotonic() - started
            results[f"converge_{n}"] = {"after_last_start_s": took, "from_first_start_s": total if took else None}
            print(f"convergence, {n} nodes: {took if took is None else round(took, 3)} s after the last node was ready "
                  f"({round(total, 2)} s from the first start)")
            for node in nodes:
                node.stop()

        nodes = cluster(a.binary, work, a.detect_nodes, extra, "d")
        everyone += nodes
        for node in nodes:
            node.start()
        names = {x.name for x in nodes}
        if wait(lambda: all({k for k, v in x.states().items() if v == "alive"} == names for x in nodes), 30) is None:
            raise SystemExit("detection cluster did not converge")
        times = []
        victim = nodes[-1]
        others = nodes[:-1]
        for t in range(a.trials):
            victim.stop()
            took = wait(lambda: all(x.states().get(victim.name) == "down" for x in others), 60)
            times.append(took)
            print(f"detection trial {t + 1}: {took if took is None else round(took, 3)} s")
            victim.start()
            wait(lambda: all(x.states().get(victim.name) == "alive" for x in others), 30)
        ok = sorted(x for x in times if x is not None)
        p = lambda q: ok[min(len(ok) - 1, int(round(q * (len(ok) - 1))))] if ok else None
        results["detection"] = {"trials": len(times), "p50_s": p(0.5), "p99_s": p(0.99), "missed": len(times) - len(ok)}
        print(f"detection after SIGKILL, {a.detect_nodes} nodes: p50 {p(0.5)} s, p99 {p(0.99)} s over {len(ok)} trials")

        time.sleep(2)
        paused = nodes[1]
        os.kill(paused.proc.pid, signal.SIGSTOP)
        time.sleep(a.pause)
        os.kill(paused.proc.pid, signal.SIGCONT)
        false_downs = set()
        end = time.monotonic() + a.watch
        while time.monotonic() < end:
            for x in nodes:
                for member, state in x.states().items():
                    if state == "down":
                        false_downs.add((x.name, member))
            time.sleep(0.05)
        results["pause"] = {"pause_s": a.pause, "false_down_verdicts": sorted(false_downs)}
        print(f"SIGSTOP {a.pause} s: false 'down' verdicts: {len(false_downs)} {sorted(false_downs)}")
        print(json.dumps(results))
    finally:
        for node in everyone:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
