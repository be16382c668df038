#!/usr/bin/env bash
# Resident memory for the same data: ENTRIES values of SIZE bytes (keys k0, k1, ...)
# written into memcached and into fanz-node's memory tier (no disk tier), in one run.
#
# Usage: bench/peers/memory.sh     (ENTRIES=1000000 SIZE=100 to change)
# Installs memcached if missing. Everything on 127.0.0.1, stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENTRIES=${ENTRIES:-1000000}; SIZE=${SIZE:-100}
if ! [[ "$ENTRIES" =~ ^[1-9][0-9]*$ && "$SIZE" =~ ^[1-9][0-9]*$ ]] || [ "$SIZE" -gt 1048576 ]; then
  echo "ENTRIES and SIZE must be positive whole numbers (SIZE at most 1 MiB)" >&2; exit 2
fi
command -v memcached >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null; }
cargo build --release -q -p fanz-node -p fanz-bench
work=$(mktemp -d /tmp/fanz-mem-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

MEMCACHED=18591; FANZ=127.0.0.1:18592; FANZ_ADMIN=127.0.0.1:18593; FANZ_H3=127.0.0.1:18594
memcached -l 127.0.0.1 -p "$MEMCACHED" -U 0 -t 1 -m 4096 -u root & mc=$!; pids+=($mc)
# At its defaults but for the two capacities, as memcached gets -m: room for every
# entry in memory, no disk tier (memcached has none). HTTP/3 is on, as by default, on
# its own port; the default log level.
target/release/fanz-node --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" --h3-addr "$FANZ_H3" \
  --memory-capacity 4GiB --disk-capacity 0 --data-dir "$work/fanz-data" 2>/dev/null & fz=$!; pids+=($fz)
for _ in $(seq 100); do curl -sf "http://$FANZ_ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
mc_empty=$(rss_kib "$mc"); fz_empty=$(rss_kib "$fz")

# memcached: pipelined sets, 10 000 per write.
python3 - "$MEMCACHED" "$ENTRIES" "$SIZE" <<'PY'
import socket, sys
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
value = b"v" * size
for start in range(0, n, 10000):
    s.sendall(b"".join(b"set k%d 0 0 %d noreply\r\n%s\r\n" % (i, size, value) for i in range(start, min(n, start + 10000))))
s.sendall(b"get k%d\r\n" % (n - 1))
buf = b""
while not buf.endswith(b"END\r\n"):
    buf += s.recv(65536)
assert b"VALUE" in buf, "memcached lost the last key"
PY

# fanz-node: every key once, in order, through the KV API.
rate_guess=20000
duration=$(( ENTRIES / rate_guess + 5 ))
out=$(target/release/fanz-bench --url "http://$FANZ/kv/{key}" --keys "$ENTRIES" --sequential --writes 1 \
  --value-size "$SIZE" --connections 32 --duration "$duration" --warmup 0 --json)
written=$(echo "$out" | sed -E 's/.*"requests":([0-9]+).*/\1/')
if [ "$written" -lt "$ENTRIES" ]; then
  echo "only $written of $ENTRIES writes in ${duration}s; raise rate_guess" >&2; exit 1
fi
curl -sf -o /dev/null "http://$FANZ/kv/k$((ENTRIES - 1))" || { echo "fanz-node lost the last key" >&2; exit 1; }
sleep 1
mc_full=$(rss_kib "$mc"); fz_full=$(rss_kib "$fz")
echo
echo "$ENTRIES entries of $SIZE bytes:"
printf '%-12s %14s %14s %16s\n' server empty_KiB full_KiB bytes_per_entry
printf '%-12s %14s %14s %16.0f\n' memcached "$mc_empty" "$mc_full" "$(awk "BEGIN{print ($mc_full - $mc_empty) * 1024 / $ENTRIES}")"
printf '%-12s %14s %14s %16.0f\n' fanz-node "$fz_empty" "$fz_full" "$(awk "BEGIN{print ($fz_full - $fz_empty) * 1024 / $ENTRIES}")"
echo "fanz-node / memcached resident memory when full: $(awk "BEGIN{printf \"%.2f\", $fz_full / $mc_full}")"
