"""Shared helpers for the cluster scripts: real fanz-node processes on 127.0.0.1, each
with its own ports and data directory, all joining through the first node."""
import http.client, json, os, signal, socket, subprocess, time


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, work, cluster_dir, name, seed, extra, memory="16MiB"):
        self.name, self.binary, self.extra, self.memory = name, binary, extra, memory
        self.admin = free_port()
        self.http = free_port()
        self.gossip = free_port(socket.SOCK_DGRAM)
        self.peer = free_port(socket.SOCK_DGRAM)
        self.data = os.path.join(work, name)
        self.cluster_dir = cluster_dir
        self.seed = seed if seed is not None else self.gossip
        self.log = open(os.path.join(work, name + ".log"), "ab")
        self.proc = None

    def start(self):
        args = [self.binary, "--http-addr", f"127.0.0.1:{self.http}", "--admin-addr", f"127.0.0.1:{self.admin}",
                "--h3-addr", "off", "--resp-addr", "off", "--data-dir", self.data, "--memory-capacity", self.memory, "--disk-capacity", "0",
                "--cluster-dir", self.cluster_dir, "--node-id", self.name,
                "--gossip-addr", f"127.0.0.1:{self.gossip}", "--peer-addr", f"127.0.0.1:{self.peer}",
                "--seeds", f"127.0.0.1:{self.seed}", "--log-level", "warn"] + self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}")
            time.sleep(0.01)
        raise SystemExit(f"{self.name} not ready in 30 s")

    def states(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
            c.request("GET", "/cluster")
            report = json.loads(c.getresponse().read())
            return {m["id"]: m["state"] for m in report["members"]}
        except (OSError, ValueError):
            return {}

    def stop(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()
        self.proc = None


def wait(predicate, limit):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def cluster(binary, work, n, extra, tag, memory="16MiB"):
    cdir = os.path.join(work, f"pki-{tag}")
    subprocess.run([binary, "cluster-init", cdir, "--nodes", "1"], check=True, stdout=subprocess.DEVNULL)
    first = Node(binary, work, os.path.join(cdir, "node-1"), f"{tag}-1", None, extra, memory)
    nodes = [first]
    for i in range(2, n + 1):
        # Every node shares node-1's certificate: enough for membership figures.
        nodes.append(Node(binary, work, os.path.join(cdir, "node-1"), f"{tag}-{i}", first.gossip, extra, memory))
    return nodes


def request(port, method, path, body=None, timeout=30):
    """One request to 127.0.0.1:port; returns (status, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=body)
    r = c.getresponse()
    return r.status, r.read()


def converged(nodes, limit=30):
    names = {x.name for x in nodes}
    return wait(lambda: all({k for k, v in x.states().items() if v == "alive"} == names for x in nodes), limit)
