#!/usr/bin/env python3
"""RFC 9111 behaviours side by side: the same exchanges through fanz-node (at its
default settings), nginx proxy_cache and Varnish, each in front of the same scripted
origin, and a table of which behaviours each gets right.

Run through bench/peers/conformance.sh (it installs the peers and builds the node).
Every server listens on 127.0.0.1 and is stopped on exit. Each case uses its own path
per target, so targets and cases never share cached objects.
"""

import email.utils
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

FUTURE = time.time() + 3600


def http_dates(t):
    """RFC 9110 §5.6.7: IMF-fixdate, obsolete RFC 850 and asctime forms of `t`."""
    imf = email.utils.formatdate(t, usegmt=True)  # Sun, 06 Nov 1994 08:49:37 GMT
    tm = time.gmtime(t)
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", tm)
    asctime = time.strftime("%a %b ", tm) + f"{tm.tm_mday:>2}" + time.strftime(" %H:%M:%S %Y", tm)
    return imf, rfc850, asctime


IMF, RFC850, ASCTIME = http_dates(FUTURE)
OLD = "Sat, 01 Jan 2000 00:00:00 GMT"

# name -> (section, what is right, status, headers). The origin answers a GET or HEAD
# for /{name}/{target} with these, a body numbering the request, and an ETag; 304 to
# a matching If-None-Match. POST answers 201, or 500 for cases named *-error.
CASES = {
    "max-age": ("4.2.1", "reused while fresh", 200, {"Cache-Control": "max-age=600"}),
    "s-maxage": ("4.2.1", "s-maxage makes it fresh", 200, {"Cache-Control": "s-maxage=600"}),
    "uppercase": ("5.2", "directive names are case-insensitive", 200, {"Cache-Control": "MAX-AGE=600"}),
    "expires-imf": ("5.3", "Expires (IMF-fixdate)", 200, {"Expires": IMF}),
    "expires-rfc850": ("5.3", "Expires (RFC 850 form)", 200, {"Expires": RFC850}),
    "expires-asctime": ("5.3", "Expires (asctime form)", 200, {"Expires": ASCTIME}),
    "status-500": ("3", "a 500 with explicit freshness is stored", 500, {"Cache-Control": "max-age=600"}),
    "status-404-heuristic": ("4.2.2", "a 404 is heuristically cacheable", 404, {"Last-Modified": OLD}),
    "must-understand": ("5.2.2.3", "must-understand overrides no-store for a known status", 200,
                        {"Cache-Control": "must-understand, no-store, max-age=600"}),
    "no-store": ("5.2.2.5", "no-store is not stored", 200, {"Cache-Control": "no-store, max-age=600"}),
    "private": ("5.2.2.7", "private is not stored by a shared cache", 200, {"Cache-Control": "private, max-age=600"}),
    "no-cache": ("5.2.2.4", "no-cache is revalidated before reuse", 200, {"Cache-Control": "no-cache, max-age=600"}),
    "age-stale": ("4.2.3", "a received Age counts (Age 7200 > max-age 3600)", 200,
                  {"Cache-Control": "max-age=3600", "Age": "7200"}),
    "age-overflow": ("1.2.2", "an Age too large to represent means stale", 200,
                     {"Cache-Control": "max-age=600", "Age": "99999999999999999999999"}),
    "age-invalid": ("5.1", "an invalid Age is ignored", 200, {"Cache-Control": "max-age=600", "Age": "abc"}),
    "max-age-float": ("5.2.2.1", "max-age=1.5 is not a lifetime", 200, {"Cache-Control": "max-age=1.5"}),
    "max-age-space": ("5.2", "max-age =600 (space before =) is not a lifetime", 200,
                      {"Cache-Control": "max-age =600"}),
    "max-age-duplicate": ("4.2.1", "max-age=0, max-age=600: the first counts, or stale", 200,
                          {"Cache-Control": "max-age=0, max-age=600"}),
    "expires-invalid": ("5.3", "an invalid Expires means expired", 200, {"Expires": "0"}),
    "status-500-heuristic": ("4.2.2", "a 500 is not heuristically cacheable", 500, {"Last-Modified": OLD}),
    "request-max-age": ("5.2.1.1", "a request's max-age=10 refuses a stored response aged 40", 200,
                        {"Cache-Control": "max-age=600", "Age": "40"}),
    "only-if-cached": ("5.2.1.7", "only-if-cached on a miss: 504, the origin not asked", 200,
                       {"Cache-Control": "max-age=600"}),
    "conditional-miss": ("4.3.2", "a client's If-None-Match reaches the origin on a miss", 200,
                         {"Cache-Control": "max-age=600"}),
    "head-miss": ("9.3.2 (9110)", "a HEAD miss reaches the origin as HEAD", 200, {"Cache-Control": "max-age=600"}),
    "post-invalidates": ("4.4", "a successful POST invalidates the URL", 200, {"Cache-Control": "max-age=600"}),
    "post-error": ("4.4", "a failed POST invalidates nothing", 200, {"Cache-Control": "max-age=600"}),
    "vary": ("4.1", "Vary keeps variants apart", 200, {"Cache-Control": "max-age=600", "Vary": "Accept-Language"}),
    "vary-star": ("4.1", "Vary: * is never reused", 200, {"Cache-Control": "max-age=600", "Vary": "*"}),
    "authorization": ("3.5", "a response to a request with Authorization is not shared", 200,
                      {"Cache-Control": "max-age=600"}),
    "authorization-public": ("3.5", "... unless it is public", 200, {"Cache-Control": "public, max-age=600"}),
    "swr": ("RFC 5861", "stale-while-revalidate serves the stale copy at once", 200,
            {"Cache-Control": "max-age=1, stale-while-revalidate=60"}),
    "range-suffix": ("14.1.2 (9110)", "a suffix range (bytes=-2) on a stored response", 200,
                     {"Cache-Control": "max-age=600"}),
    "range-after-miss": ("3.4", "a Range on a miss, then the same Range is answered from the cache", 200,
                         {"Cache-Control": "max-age=600"}),
    "refresh-304": ("4.3.4", "a 304 updates the stored headers", 200, {"Cache-Control": "no-cache"}),
    "range": ("3.4 / 14 (9110)", "a Range on a stored response gets 206", 200, {"Cache-Control": "max-age=600"}),
    "broken-origin-url": ("(robustness)", "20 answers of 500 elsewhere change nothing for a new URL", 200,
                          {"Cache-Control": "max-age=600"}),
}


class Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.counts = {}
        self.last = {}

    def seen(self, path):
        with self.lock:
            return self.counts.get(path, 0)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, send_body):
        path = self.path.split("?")[0]
        srv = self.server
        with srv.lock:
            n = srv.counts.get(path, 0) + 1
            srv.counts[path] = n
            srv.last[path] = (self.command, {k.lower(): v for k, v in self.headers.items()})
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        name = path.strip("/").split("/")[0]
        if name == "broken":
            return self.reply(500, {}, b"broken", send_body)
        if self.command == "POST":
            return self.reply(500 if name == "post-error" else 201, {}, b"posted", send_body)
        _, _, status, headers = CASES.get(name, ("", "", 404, {}))
        headers = dict(headers)
        etag = '"v1"'
        if name == "refresh-304" and n > 1:
            headers["X-Updated"] = str(n)
        if self.headers.get("If-None-Match") == etag:
            return self.reply(304, dict(headers, ETag=etag), b"", False)
        if name == "vary":
            body = f"{self.headers.get('Accept-Language')} #{n}".encode()
        else:
            body = f"{path} #{n}".encode()
        headers["ETag"] = etag
        return self.reply(status, headers, body, send_body)

    def reply(self, status, headers, body, send_body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self):
        self.answer(True)

    def do_HEAD(self):
        self.answer(False)

    def do_POST(self):
        self.answer(True)


def request(addr, method, path, headers=None, body=None):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request(method, path, body=body, headers=dict({"Host": "conformance.test"}, **(headers or {})))
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def check(name, addr, target, origin):
    """True when `target` got case `name` right."""
    path = f"/{name}/{target}"
    get = lambda h=None: request(addr, "GET", path, h)
    if name in ("no-store", "private", "age-stale", "age-overflow", "max-age-float", "max-age-space",
                "max-age-duplicate", "expires-invalid", "status-500-heuristic"):
        get(); get()
        return origin.seen(path) == 2
    if name == "no-cache":
        get(); get()
        return origin.seen(path) == 2 and origin.last[path][1].get("if-none-match") == '"v1"'
    if name == "request-max-age":
        get(); get({"Cache-Control": "max-age=10"})
        return origin.seen(path) == 2
    if name == "only-if-cached":
        status, _, _ = get({"Cache-Control": "only-if-cached"})
        return status == 504 and origin.seen(path) == 0
    if name == "conditional-miss":
        status, _, _ = get({"If-None-Match": '"v1"'})
        return origin.seen(path) == 1 and origin.last[path][1].get("if-none-match") == '"v1"' and status == 304
    if name == "head-miss":
        request(addr, "HEAD", path)
        return origin.seen(path) == 1 and origin.last[path][0] == "HEAD"
    if name in ("post-invalidates", "post-error"):
        get(); get()
        before = origin.seen(path)
        request(addr, "POST", path, {"Content-Type": "text/plain"}, b"x")
        get()
        refetched = origin.seen(path) > before + 1
        return refetched if name == "post-invalidates" else not refetched
    if name == "vary":
        _, _, a = get({"Accept-Language": "en"})
        _, _, b = get({"Accept-Language": "fr"})
        _, _, a2 = get({"Accept-Language": "en"})
        return a.startswith(b"en") and b.startswith(b"fr") and a2 == a and origin.seen(path) == 2
    if name == "vary-star":
        get(); get()
        return origin.seen(path) == 2
    if name in ("authorization", "authorization-public"):
        auth = {"Authorization": "Basic dTpw"}
        get(auth); get(auth)
        return origin.seen(path) == (2 if name == "authorization" else 1)
    if name == "swr":
        get()
        time.sleep(1.5)
        status, _, body = get()
        return status == 200 and body.endswith(b"#1")
    if name == "range-suffix":
        _, _, whole = get()
        status, _, body = get({"Range": "bytes=-2"})
        return status == 206 and body == whole[-2:] and origin.seen(path) == 1
    if name == "range-after-miss":
        first_status, _, _ = get({"Range": "bytes=0-1"})
        status, _, body = get({"Range": "bytes=0-1"})
        return first_status in (200, 206) and status == 206 and len(body) == 2 and origin.seen(path) == 1
    if name == "refresh-304":
        get()
        _, h, _ = get()
        _, h2, _ = get()
        return origin.seen(path) == 3 and h2.get("x-updated") == "3"
    if name == "range":
        get()
        status, h, body = get({"Range": "bytes=0-1"})
        return status == 206 and len(body) == 2 and origin.seen(path) == 1
    if name == "broken-origin-url":
        for _ in range(20):
            request(addr, "GET", f"/broken/{target}")
        status, _, _ = get()
        return status == 200
    # Cases that must be reused: the second request is answered from the cache.
    get(); get()
    return origin.seen(path) == 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(addr, timeout=20):
    host, port = addr.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def main():
    fanz_bin = sys.argv[1] if len(sys.argv) > 1 else "target/release/fanz-node"
    work = tempfile.mkdtemp(prefix="fanz-conformance-")
    os.chmod(work, 0o755)
    origin = Origin()
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    o = f"127.0.0.1:{origin.server_address[1]}"
    procs = []
    addrs = {}
    try:
        addrs["fanz"] = f"127.0.0.1:{free_port()}"
        procs.append(subprocess.Popen(
            [fanz_bin, "--origin", f"http://{o}", "--http-addr", addrs["fanz"],
             "--admin-addr", f"127.0.0.1:{free_port()}", "--h3-addr", "off", "--resp-addr", "off", "--data-dir", f"{work}/fanz"],
            stdout=subprocess.DEVNULL, stderr=open(f"{work}/fanz.log", "w")))
        addrs["nginx"] = f"127.0.0.1:{free_port()}"
        os.makedirs(f"{work}/nginx-cache")
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(f"""user root; worker_processes 1; daemon off; pid {work}/nginx.pid;
error_log {work}/nginx.error.log warn; events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {work}/b; proxy_temp_path {work}/p;
 fastcgi_temp_path {work}/f; uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
 proxy_cache_path {work}/nginx-cache keys_zone=c:16m;
 server {{ listen {addrs['nginx']};
  location / {{ proxy_pass http://{o}; proxy_http_version 1.1; proxy_set_header Connection "";
   proxy_set_header Host $host; proxy_cache c; proxy_cache_revalidate on; proxy_cache_lock on; }} }} }}
""")
        procs.append(subprocess.Popen(["nginx", "-e", f"{work}/nginx.early.log", "-c", f"{work}/nginx.conf"]))
        addrs["varnish"] = f"127.0.0.1:{free_port()}"
        host, port = o.rsplit(":", 1)
        with open(f"{work}/default.vcl", "w") as f:
            f.write(f'vcl 4.1;\nbackend origin {{ .host = "{host}"; .port = "{port}"; }}\n')
        os.makedirs(f"{work}/varnish")
        procs.append(subprocess.Popen(
            ["varnishd", "-F", "-j", "none", "-n", f"{work}/varnish", "-a", addrs["varnish"],
             "-f", f"{work}/default.vcl", "-s", "malloc,64m", "-p", "default_ttl=0", "-p", "default_grace=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name, addr in addrs.items():
            if not wait_for(addr):
                sys.exit(f"{name} did not start on {addr} (logs in {work})")
        time.sleep(1)
        targets = list(addrs)
        results = {t: {} for t in targets}
        for target in targets:
            for name in CASES:
                try:
                    results[target][name] = check(name, addrs[target], target, origin)
                except Exception as e:  # a crash or a hang is a failure, with a reason
                    print(f"{target} {name}: {e}", file=sys.stderr)
                    results[target][name] = False
        mark = lambda ok: "yes" if ok else "**no**"
        print(f"| RFC 9111 § | behaviour | {' | '.join(targets)} |")
        print(f"|---|---|{'---|' * len(targets)}")
        for name, (section, what, _, _) in CASES.items():
            print(f"| {section} | {what} | {' | '.join(mark(results[t][name]) for t in targets)} |")
        totals = [sum(results[t].values()) for t in targets]
        print(f"| | **passed of {len(CASES)}** | {' | '.join(f'**{n}**' for n in totals)} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        origin.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
