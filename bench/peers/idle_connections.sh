#!/usr/bin/env bash
# One node holding many idle keep-alive connections while a separate client measures
# hits: open-loop hit latency without them and with them, the node's resident memory
# per idle connection, and how many of the idle connections are still open at the end.
#
# Usage: bench/peers/idle_connections.sh   (IDLE=20000 RATE=10000 DURATION=10 ROUNDS=3 to change;
#        NODE_BIN=path to measure another fanz-node build than this tree's)
# Each round measures without, then with the idle connections; the median ratio is
# the figure (this machine is shared: single runs swing). A control follows in each
# round: the same idle connections held by another process (the origin), which shows
# what that many idle loopback sockets cost the machine's kernel whoever holds them;
# the node's own share is its p99 against the control's.
# Raises the open-file limit for itself and the node. Node pinned to core 1, clients
# to core 0; everything on 127.0.0.1, stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
IDLE=${IDLE:-20000}; RATE=${RATE:-10000}; DURATION=${DURATION:-10}; ROUNDS=${ROUNDS:-3}
NODE_BIN=${NODE_BIN:-target/release/fanz-node}
if ! [[ "$IDLE" =~ ^[1-9][0-9]*$ && "$RATE" =~ ^[1-9][0-9]*$ && "$DURATION" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "IDLE, RATE, DURATION and ROUNDS must be positive whole numbers" >&2; exit 2
fi
hard=$(ulimit -Hn)
want=$((IDLE + 1000))
if [ "$hard" != unlimited ] && [ "$want" -gt "$hard" ]; then
  # Some containers cap the hard limit (and root cannot raise it): hold what fits.
  IDLE=$((hard - 1000))
  echo "note: the open-file hard limit is $hard here; holding $IDLE idle connections" >&2
  want=$hard
fi
ulimit -n "$want"
cargo build --release -q -p fanz-node -p fanz-bench
work=$(mktemp -d /tmp/fanz-idle-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

ORIGIN=127.0.0.1:18480; FANZ=127.0.0.1:18481; FANZ_ADMIN=127.0.0.1:18482; FANZ_H3=127.0.0.1:18483
target/release/fanz-bench origin --addr "$ORIGIN" 2>"$work/origin.log" & pids+=($!)
# At its defaults but for the connection limit, raised to hold the idle clients: the
# default log level, HTTP/3 on (on its own port, unused by the load).
taskset -c 1 "$NODE_BIN" --origin "http://$ORIGIN" --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" \
  --h3-addr "$FANZ_H3" --data-dir "$work/fanz-data" --max-connections $((IDLE + 1000)) \
  2>"$work/node.log" & node=$!
pids+=($node)
for _ in $(seq 100); do curl -sf "http://$FANZ_ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf -o /dev/null "http://$FANZ/1k/obj"; curl -sf -o /dev/null "http://$FANZ/1k/obj"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$node/status"; }
measure() { # $1 label -> JSON
  taskset -c 0 target/release/fanz-bench --url "http://$FANZ/1k/obj" --rate "$RATE" --connections 32 \
    --duration "$DURATION" --warmup 1 --json --label "$1"
}
# The idle clients: each connection sends one request, reads the answer, then waits.
cat > "$work/idle.py" <<'PY'
import socket, sys, time, selectors
host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks = []
request = b"GET /1k/obj HTTP/1.1\r\nHost: bench\r\n\r\n"
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(request)
    socks.append(s)
    if i % 1000 == 999:
        for t in socks[-1000:]:
            t.recv(65536)
for t in socks[len(socks) - len(socks) % 1000:]:
    t.recv(65536)
print("open", flush=True)
time.sleep(hold)
sel = selectors.DefaultSelector()
alive = 0
for s in socks:
    s.setblocking(False)
    try:
        alive += 0 if s.recv(1) == b"" else 1
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print(f"alive {alive}", flush=True)
PY
hold=$((DURATION + 4))
field() { echo "$1" | sed -E "s/.*\"$2\":([0-9.]+).*/\\1/"; }
ratios=()
echo "open loop at $RATE req/s, ${DURATION}s, 1 KiB hits; $IDLE idle keep-alive connections; $ROUNDS rounds:"
printf '%-6s %-26s %8s %8s %8s\n' round run p50_ms p99_ms max_ms
# hold PORT: opens $IDLE idle connections to PORT from a separate process and returns
# once they are all open and the last ones idle; finish_hold waits for it to end and
# sets `alive` to how many were still open.
hold() {
  taskset -c 0 python3 "$work/idle.py" 127.0.0.1 "$1" "$IDLE" "$hold" > "$work/idle.out" & idle=$!
  pids+=($idle)
  for _ in $(seq 600); do grep -q open "$work/idle.out" 2>/dev/null && break; sleep 0.1; done
  sleep 1 # idle: the last ones opened have been parked too (front::conn::PARK_AFTER)
}
finish_hold() { wait "$idle" || true; alive=$(awk '/^alive/ {print $2}' "$work/idle.out"); }
row() { printf '%-6s %-26s %8s %8s %8s\n' "$1" "$2" "$(field "$3" p50_ms)" "$(field "$3" p99_ms)" "$(field "$3" max_ms)"; }
controls=()
for round in $(seq "$ROUNDS"); do
  base=$(measure without-idle)
  rss_before=$(rss_kib)
  hold "${FANZ##*:}"
  rss_idle=$(rss_kib)
  with=$(measure with-idle)
  finish_hold
  held=$alive
  sleep 2 # let the node finish closing them
  hold "${ORIGIN##*:}"
  control=$(measure control)
  finish_hold
  row "$round" "without idle" "$base"
  row "$round" "with $IDLE idle" "$with"
  row "$round" "$IDLE idle at the origin" "$control"
  ratios+=("$(awk "BEGIN{printf \"%.2f\", $(field "$with" p99_ms) / $(field "$base" p99_ms)}")")
  controls+=("$(awk "BEGIN{printf \"%.2f\", $(field "$with" p99_ms) / $(field "$control" p99_ms)}")")
  if [ "$round" = 1 ]; then # later rounds reuse the memory the first one freed
    echo "       node RSS $rss_before KiB before, $rss_idle KiB holding them: $(awk "BEGIN{printf \"%.1f\", ($rss_idle - $rss_before) * 1024 / $IDLE}") bytes per idle connection"
  fi
  echo "       idle connections still open after ${hold}s: ${held:-?} of $IDLE"
  sleep 2 # let the origin finish closing them
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "p99 with / without, per round: ${ratios[*]}; median $median"
median=$(printf '%s\n' "${controls[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "p99 with the idle connections at the node / at the origin (the control), per round: ${controls[*]}; median $median"
