#!/usr/bin/env bash
# One node holding many idle keep-alive connections while a separate client measures
# hits: open-loop hit latency without them and with them, the node's resident memory
# per idle connection, and how many of the idle connections are still open at the end.
#
# Usage: bench/peers/idle_connections.sh   (IDLE=20000 RATE=10000 DURATION=10 ROUNDS=3 to change;
#        NODE_BIN=path to measure another fanz-node build than this tree's)
# Each round measures without, then with the idle connections; the median ratio is
# the figure (this machine is shared: single runs swing).
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

ORIGIN=127.0.0.1:18480; FANZ=127.0.0.1:18481; FANZ_ADMIN=127.0.0.1:18482
target/release/fanz-bench origin --addr "$ORIGIN" 2>"$work/origin.log" & pids+=($!)
taskset -c 1 "$NODE_BIN" --origin "http://$ORIGIN" --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" \
  --h3-addr off --data-dir "$work/fanz-data" --max-connections $((IDLE + 1000)) --log-level warn & node=$!
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
printf '%-6s %-22s %8s %8s %8s\n' round run p50_ms p99_ms max_ms
for round in $(seq "$ROUNDS"); do
  base=$(measure without-idle)
  rss_before=$(rss_kib)
  taskset -c 0 python3 "$work/idle.py" 127.0.0.1 "${FANZ##*:}" "$IDLE" "$hold" > "$work/idle.out" & idle=$!
  pids+=($idle)
  for _ in $(seq 600); do grep -q open "$work/idle.out" 2>/dev/null && break; sleep 0.1; done
  sleep 1 # idle: the last ones opened have been parked too (front::conn::PARK_AFTER)
  rss_idle=$(rss_kib)
  with=$(measure with-idle)
  wait "$idle" || true
  alive=$(awk '/^alive/ {print $2}' "$work/idle.out")
  printf '%-6s %-22s %8s %8s %8s\n' "$round" "without idle" "$(field "$base" p50_ms)" "$(field "$base" p99_ms)" "$(field "$base" max_ms)"
  printf '%-6s %-22s %8s %8s %8s\n' "$round" "with $IDLE idle" "$(field "$with" p50_ms)" "$(field "$with" p99_ms)" "$(field "$with" max_ms)"
  ratios+=("$(awk "BEGIN{printf \"%.2f\", $(field "$with" p99_ms) / $(field "$base" p99_ms)}")")
  if [ "$round" = 1 ]; then # later rounds reuse the memory the first one freed
    echo "       node RSS $rss_before KiB before, $rss_idle KiB holding them: $(awk "BEGIN{printf \"%.1f\", ($rss_idle - $rss_before) * 1024 / $IDLE}") bytes per idle connection"
  fi
  echo "       idle connections still open after ${hold}s: ${alive:-?} of $IDLE"
  sleep 2 # let the node finish closing them
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "p99 with / without, per round: ${ratios[*]}; median $median"
