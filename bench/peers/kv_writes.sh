#!/usr/bin/env bash
# KV writes against Redis SET, in one run (issue 21, part 5): fanz-node at its
# defaults (disk tier on) and Redis without persistence, each pinned to core 1, the
# load on core 0, 32 connections, 1 KiB values over 100 000 keys, rounds alternating
# fanz then Redis; the median of each is compared. fanz-bench sends HTTP PUTs to
# /kv/{key} (the client library's SET costs the same, see docs/PERFORMANCE.md);
# redis-benchmark sends as many SETs as fanz-node served in its round, to Redis and
# to fanz-node's Redis-protocol port (resp_addr, on by default): the same client,
# the same commands, the same keys, to both servers. Beside them, the
# HTTP floor: the same PUTs to a hyper server that reads each and answers 204, storing
# nothing (`fanz-bench origin`), which no HTTP/1.1 KV write can beat; and the same
# build with `--disk-capacity 0`, which shows what the disk tier costs a write. Each
# round also gives fanz-node's and Redis's CPU time per write, user and system.
#
# Usage: bench/peers/kv_writes.sh   (DURATION=6 ROUNDS=3 CONNS=32 KEYS=100000 to
#        change; NODE=path/to/fanz-node to measure another build; EXTRA="..." to pass
#        node settings; NODISK=0 to leave out the no-disk side; REDIS_FLAGS="..." to
#        pass Redis settings, e.g. EXTRA="--kv-write-ack synced" against
#        REDIS_FLAGS="--appendonly yes --appendfsync always", each answering a write
#        once it is flushed to the device). Runs as root; everything on 127.0.0.1,
#        stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-6}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-32}; KEYS=${KEYS:-100000}
for n in "$DURATION" "$ROUNDS" "$CONNS" "$KEYS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "DURATION, ROUNDS, CONNS and KEYS must be positive whole numbers" >&2; exit 2; }
done
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build --release -q -p fanz-node -p fanz-bench
NODE=${NODE:-target/release/fanz-node}
work=$(mktemp -d /tmp/fanz-writes-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

REDIS=18490; FANZ=127.0.0.1:18491; FANZ_ADMIN=127.0.0.1:18492; FLOOR=127.0.0.1:18493
FANZ_NODISK=127.0.0.1:18494; FANZ_NODISK_ADMIN=127.0.0.1:18495
# Each node's HTTP/3 listener is on, as by default (the load does not use it).
FANZ_H3=127.0.0.1:18496; FANZ_NODISK_H3=127.0.0.1:18497
# And its Redis-protocol port, on as by default.
FANZ_RESP=18498; FANZ_NODISK_RESP=127.0.0.1:18499
# shellcheck disable=SC2086
taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" --logfile "$work/redis.log" ${REDIS_FLAGS:-} & pids+=($!)
# shellcheck disable=SC2086
taskset -c 1 "$NODE" --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" --h3-addr "$FANZ_H3" \
  --resp-addr "127.0.0.1:$FANZ_RESP" --data-dir "$work/fanz-data" ${EXTRA:-} 2>/dev/null & pids+=($!)
# The same build without its disk tier, on the same core: the disk tier's share of
# a write in every run (NODISK=0 leaves it out).
if [ "${NODISK:-1}" != 0 ]; then
  # shellcheck disable=SC2086
  taskset -c 1 "$NODE" --http-addr "$FANZ_NODISK" --admin-addr "$FANZ_NODISK_ADMIN" \
    --h3-addr "$FANZ_NODISK_H3" --resp-addr "$FANZ_NODISK_RESP" --data-dir "$work/fanz-nodisk" ${EXTRA:-} --disk-capacity 0 \
    2>/dev/null & pids+=($!)
fi
# The floor: hyper reading each PUT and answering 204, nothing stored (fanz-bench's
# origin, one thread), on the same core: what HTTP/1.1 alone costs here.
taskset -c 1 target/release/fanz-bench origin --addr "$FLOOR" 2>/dev/null & pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$FANZ_ADMIN/readyz" >/dev/null 2>&1 && redis-cli -p "$REDIS" ping >/dev/null 2>&1 \
    && { [ "${NODISK:-1}" = 0 ] || curl -sf "http://$FANZ_NODISK_ADMIN/readyz" >/dev/null 2>&1; } && break
  sleep 0.1
done

field() { echo "$1" | sed -E "s/.*\"$2\":([0-9.]+).*/\1/"; }
# One round of PUTs (1 KiB values over $KEYS keys, $CONNS connections) to URL's
# /kv/{key}, from core 0: fanz-bench's JSON summary.
puts() {
  taskset -c 0 target/release/fanz-bench --url "http://$1/kv/{key}" --keys "$KEYS" --writes 1 \
    --value-size 1024 --connections "$CONNS" --duration "$DURATION" --warmup 1 --seed "$2" --json --label "$3"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo "node: $NODE ${EXTRA:-}; redis ${REDIS_FLAGS:-without persistence}; ${DURATION}s rounds, $CONNS connections, 1 KiB values over $KEYS keys"
fz=(); rd=(); fo=(); nd=(); rs=()
# redis-benchmark's SETs (1 KiB values over $KEYS keys, $CONNS connections) to the
# Redis-protocol port $1, $2 of them, from core 0: SET/s.
sets() {
  taskset -c 0 redis-benchmark -p "$1" -t set -d 1024 -r "$KEYS" -n "$2" -c "$CONNS" --csv 2>/dev/null | tail -1 \
    | tr -d '"' | cut -d, -f2
}
# CPU time (user and system, from /proc) of process $1 since ticks "$2", per request
# of $3: "user/system" in microseconds.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
cpu_per() {
  read -r u0 s0 <<< "$2"; read -r u1 s1 <<< "$(ticks "$1")"
  awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$3" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.1f/%.1f", u * 1e6 / hz / n, s * 1e6 / hz / n}'
}
for r in $(seq "$ROUNDS"); do
  before=$(ticks "${pids[1]}")
  out=$(puts "$FANZ" "$r" fanz-set)
  f=$(field "$out" req_per_s)
  # Over the round's warm-up second too, at the rate measured after it.
  fcpu=$(cpu_per "${pids[1]}" "$before" "$(awk "BEGIN{printf \"%d\", $f * ($DURATION + 1)}")")
  n=$(awk "BEGIN{printf \"%d\", $f * $DURATION}")
  before=$(ticks "${pids[1]}")
  y=$(sets "$FANZ_RESP" "$n")
  ycpu=$(cpu_per "${pids[1]}" "$before" "$n")
  before=$(ticks "${pids[0]}")
  x=$(sets "$REDIS" "$n")
  rcpu=$(cpu_per "${pids[0]}" "$before" "$n")
  floor=$(puts "$FLOOR" "$r" floor)
  fl=$(field "$floor" req_per_s)
  fz+=("$f"); rd+=("$x"); fo+=("$fl"); rs+=("$y")
  no_disk=""
  if [ "${NODISK:-1}" != 0 ]; then
    nodisk=$(puts "$FANZ_NODISK" "$r" fanz-nodisk)
    nl=$(field "$nodisk" req_per_s); nd+=("$nl")
    no_disk="; without its disk tier $nl SET/s ($(ratio "$nl" "$x")x redis)"
  fi
  echo "round $r: fanz-node $f SET/s (p99 $(field "$out" p99_ms) ms), redis $x SET/s, ratio $(ratio "$f" "$x"); fanz-node over RESP $y SET/s, ratio $(ratio "$y" "$x"); HTTP floor $fl PUT/s ($(ratio "$fl" "$x")x redis)$no_disk; CPU per write, user/system us: fanz-node $fcpu (RESP $ycpu), redis $rcpu"
done
mf=$(med "${fz[@]}"); mr=$(med "${rd[@]}"); mo=$(med "${fo[@]}")
echo "median of $ROUNDS: fanz-node $mf, redis $mr, ratio $(ratio "$mf" "$mr"); HTTP floor $mo ($(ratio "$mo" "$mr")x redis, fanz-node at $(ratio "$mf" "$mo") of it)"
ms=$(med "${rs[@]}")
echo "the same SETs from redis-benchmark: fanz-node's Redis-protocol port $ms, redis $mr, ratio $(ratio "$ms" "$mr")"
if [ "${NODISK:-1}" != 0 ]; then
  mn=$(med "${nd[@]}")
  echo "without its disk tier: $mn ($(ratio "$mn" "$mr")x redis): the disk tier costs a write $(awk -v a="$mf" -v b="$mn" 'BEGIN {printf "%.0f", (1 - a / b) * 100}')% of its rate"
fi
