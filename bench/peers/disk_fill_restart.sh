#!/usr/bin/env bash
# How many small entries the disk tier keeps, and how long a restart takes to read
# them: a node at its defaults (disk tier on) takes FILL seconds of 1 KiB PUTs over
# KEYS keys, is killed with SIGKILL, the page cache is dropped, and it is started
# again; the script prints the time to /readyz and how many of SAMPLE random keys
# it still finds (the share of KEYS it kept, give or take the sample's error).
#
# Usage: bench/peers/disk_fill_restart.sh NODE_BINARY [node flags...]
#        (FILL=12 KEYS=1000000 SAMPLE=200 to change). Runs as root (drop_caches);
#        node on core 1, load on core 0, on 127.0.0.1; stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] && [ -x "$1" ] || { echo "usage: $0 NODE_BINARY [node flags...]" >&2; exit 2; }
BIN=$1; shift
FILL=${FILL:-12}; KEYS=${KEYS:-1000000}; SAMPLE=${SAMPLE:-200}
for n in "$FILL" "$KEYS" "$SAMPLE"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "FILL, KEYS and SAMPLE must be positive whole numbers" >&2; exit 2; }
done
cargo build --release -q -p fanz-bench
work=$(mktemp -d /tmp/fanz-fill-XXXX); pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
start() {
  # At its defaults: the HTTP/3 listener on (own port, unused), the default log level.
  taskset -c 1 "$BIN" --http-addr 127.0.0.1:18691 --admin-addr 127.0.0.1:18692 --h3-addr 127.0.0.1:18693 \
    --data-dir "$work/d" "$@" 2>>"$work/log" >/dev/null & pid=$!
}
ready() { for _ in $(seq 1200); do curl -sf http://127.0.0.1:18692/readyz >/dev/null 2>&1 && return; sleep 0.05; done; echo "not ready" >&2; exit 1; }
start "$@"; ready
taskset -c 0 target/release/fanz-bench --url "http://127.0.0.1:18691/kv/{key}" --keys "$KEYS" --writes 1 \
  --value-size 1024 --connections 32 --duration "$FILL" --warmup 0 --seed 5 --json --label fill \
  | sed -E 's/.*"req_per_s":([0-9.]+),"requests":([0-9]+).*/fill: \2 PUTs at \1 per second/'
sleep 1
echo "disk tier directory: $(du -sh "$work/d/cache" | cut -f1)"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(date +%s%N); start "$@"; ready; t1=$(date +%s%N)
echo "ready $(( (t1 - t0) / 1000000 )) ms after the restart (page cache dropped)"
found=0
for _ in $(seq "$SAMPLE"); do
  k=$(( (RANDOM * 32768 + RANDOM) % KEYS ))
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:18691/kv/k$k")" = 200 ] && found=$((found + 1))
done
echo "found $found of $SAMPLE random keys: about $(( found * KEYS / SAMPLE )) entries kept"
