#!/usr/bin/env bash
# A/B of cache-hit throughput: two fanz-node builds in front of the same origin, in
# interleaved rounds (A B A B ...), so a change to the hit path is measured against
# the build before it in the same run, by throughput and by the node's CPU time per
# request (steadier on a shared machine). Run it before committing such a change: a
# regression then shows up when it is made.
#
# Usage: bench/peers/ab_hits.sh [--against REF]     A = REF (default HEAD), B = this tree
#        bench/peers/ab_hits.sh A_BINARY B_BINARY   two binaries you built
#        (DURATION=6 CONNS=32 ROUNDS=3 OBJECTS=100 SIZES="1024 65536" to change;
#         LOG_LEVEL=warn to pass --log-level; unset, both run at their default level)
#
# REF is built in a git worktree under target/ab/ (dependencies shared through
# target/ab/build, so only the workspace crates are compiled again). Nodes run at
# their default settings (as a new user runs them: the default log level is info),
# pinned to core 1, wrk to core 0, on 127.0.0.1, with OBJECTS distinct URLs per size
# requested in turn; everything is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DURATION=${DURATION:-6}; CONNS=${CONNS:-32}; ROUNDS=${ROUNDS:-3}; OBJECTS=${OBJECTS:-100}
SIZES=${SIZES:-1024 65536}
for n in "$DURATION" "$CONNS" "$ROUNDS" "$OBJECTS" $SIZES; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "DURATION, CONNS, ROUNDS, OBJECTS and SIZES must be positive whole numbers" >&2; exit 2; }
done

if [ "${1:-}" = "--against" ] || [ $# -eq 0 ]; then
  ref=${2:-HEAD}
  sha=$(git rev-parse --verify "$ref^{commit}") || { echo "no such commit: $ref" >&2; exit 2; }
  tree="target/ab/src-${sha:0:12}"
  if [ ! -d "$tree" ]; then
    git worktree add --detach -f "$tree" "$sha" >/dev/null
  fi
  echo "building A = $ref (${sha:0:12}) and B = this tree" >&2
  (cd "$tree" && CARGO_TARGET_DIR="$root/target/ab/build" cargo build --release -q -p fanz-node)
  A="target/ab/fanz-node-${sha:0:12}"
  cp target/ab/build/release/fanz-node "$A"
  cargo build --release -q -p fanz-node -p fanz-bench
  B=target/release/fanz-node
  # The worktree is only a build input: drop it (the build directory stays for next time).
  git worktree remove --force "$tree"
else
  A=${1:?usage: ab_hits.sh [--against REF] | A_BINARY B_BINARY}
  B=${2:?usage: ab_hits.sh [--against REF] | A_BINARY B_BINARY}
fi
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[ -x target/release/fanz-bench ] || cargo build --release -q -p fanz-bench

work=$(mktemp -d /tmp/fanz-ab-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

ORIGIN=127.0.0.1:18190
target/release/fanz-bench origin --addr "$ORIGIN" >"$work/origin.log" 2>&1 & pids+=($!)


# Starts binary $1 as node $2 on ports 18191+2n (main) and 18192+2n (admin), its
# HTTP/3 listener on 18290+n (on, as by default; the load does not use it).
level=()
[ -n "${LOG_LEVEL:-}" ] && level=(--log-level "$LOG_LEVEL")
start() {
  local http="127.0.0.1:$((18191 + 2 * $2))" admin="127.0.0.1:$((18192 + 2 * $2))"
  # The Redis-protocol port through the environment: builds from before it ignore it.
  FANZ_RESP_ADDR="127.0.0.1:$((18295 + $2))" taskset -c 1 "$1" --origin "http://$ORIGIN" --http-addr "$http" --admin-addr "$admin" \
    --h3-addr "127.0.0.1:$((18290 + $2))" --data-dir "$work/data-$2" "${level[@]}" >>"$work/node-$2.log" 2>&1 & pids+=($!)
  node_pid[$2]=$!
  for _ in $(seq 100); do curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://$admin/readyz" >/dev/null || { echo "node $2 ($1) did not start:" >&2; tail "$work/node-$2.log" >&2; exit 1; }
  for size in $SIZES; do for i in $(seq "$OBJECTS"); do
    curl -sf -o /dev/null "http://$http/$size/obj$i"
  done; done
}
declare -A node_pid
start "$A" 0; start "$B" 1
a=127.0.0.1:18191; b=127.0.0.1:18193
for size in $SIZES; do
  for pair in "A $a" "B $b"; do
    set -- $pair
    status=$(curl -sI "http://$2/$size/obj1" | tr -d '\r' | awk -F': ' 'tolower($1) == "cache-status" {print $2}')
    case "$status" in *"; hit"*) ;; *) echo "$1 did not answer a hit for /$size/obj1: $status" >&2; exit 1;; esac
  done
done

# "req/s node-CPU-us-per-request" of node $3 (0 or 1) at $1, objects of size $2.
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/${node_pid[$1]}/stat"; }
rps() {
  local t0 t1 out
  t0=$(cpu "$3")
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s bench/peers/objects.lua "http://$1/$2/obj" -- "$OBJECTS")
  t1=$(cpu "$3")
  echo "$out" | awk -v t=$((t1 - t0)) -v hz="$ticks" '/requests in/ {n = $1} /^Requests\/sec/ {r = $2}
    END {printf "%s %.1f\n", r, t * 1e6 / hz / n}'
}
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo "A = $A"; echo "B = $B"
echo "log level: ${LOG_LEVEL:-default}; ${DURATION}s, $CONNS connections, $OBJECTS objects per size, nodes on core 1, wrk on core 0"
for size in $SIZES; do
  sa=(); sb=(); ca=(); cb=()
  for r in $(seq "$ROUNDS"); do
    # The build measured first in a pair tends to do better here: alternate.
    if [ $((r % 2)) = 1 ]; then
      read -r x xc < <(rps "$a" "$size" 0); read -r y yc < <(rps "$b" "$size" 1)
    else
      read -r y yc < <(rps "$b" "$size" 1); read -r x xc < <(rps "$a" "$size" 0)
    fi
    sa+=("$x"); sb+=("$y"); ca+=("$xc"); cb+=("$yc")
    echo "$size B round $r: A $x req/s ($xc us CPU/req), B $y req/s ($yc us CPU/req), B/A $(awk -v a="$x" -v b="$y" 'BEGIN {printf "%.3f", b / a}')"
  done
  ma=$(med "${sa[@]}"); mb=$(med "${sb[@]}"); mca=$(med "${ca[@]}"); mcb=$(med "${cb[@]}")
  echo "$size B median of $ROUNDS: A $ma, B $mb, B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", b / a}'); node CPU per request A $mca us, B $mcb us, B/A $(awk -v a="$mca" -v b="$mcb" 'BEGIN {printf "%.3f", b / a}')"
done
