#!/usr/bin/env bash
# KV reads (and writes) of 1 KiB values, in one run: fanz-node over HTTP/1.1
# (`GET /kv/{key}`, fanz-bench), fanz-node through the fanz-client library (GET and
# SET, fanz-bench's client driver), fanz-node's Redis-protocol port (resp_addr, on
# by default) and Redis without persistence (the same redis-benchmark GET and SET
# against both), and memcached (memcaslap, its default 90% get mix). Different
# protocols: the figure is what a client gets per second from each, on the same cores.
#
# Usage: bench/peers/kv_reads.sh        (DURATION=10 CONNS=32 KEYS=1000 ROUNDS=3 to change;
#        NODE=path/to/fanz-node to measure another build)
# The client-library GETs, RESP GETs and Redis GETs run ROUNDS times, alternating; the best of
# each is compared (as http_hits.sh does: this machine is shared and noisy).
# Installs redis-server, redis-tools, memcached and libmemcached-tools if missing.
# Servers pinned to core 1, load generators to core 0; everything on 127.0.0.1,
# stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}; CONNS=${CONNS:-32}; KEYS=${KEYS:-1000}; ROUNDS=${ROUNDS:-3}
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ && "$CONNS" =~ ^[1-9][0-9]*$ && "$KEYS" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "DURATION, CONNS, KEYS and ROUNDS must be positive whole numbers" >&2; exit 2
fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
   || ! command -v memcached >/dev/null || ! command -v memcaslap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    redis-server redis-tools memcached libmemcached-tools >/dev/null
fi
cargo build --release -q -p fanz-node -p fanz-bench
NODE=${NODE:-target/release/fanz-node}
work=$(mktemp -d /tmp/fanz-kv-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

REDIS=18390; MEMCACHED=18391; FANZ=127.0.0.1:18392; FANZ_ADMIN=127.0.0.1:18393; FANZ_RESP=18395
taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" --logfile "$work/redis.log" & pids+=($!)
taskset -c 1 memcached -l 127.0.0.1 -p "$MEMCACHED" -U 0 -t 1 -m 1024 -u root & pids+=($!)
# At its defaults: the default log level, the HTTP/3 listener on (the load does not use it).
taskset -c 1 "$NODE" --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" --h3-addr 127.0.0.1:18394 \
  --resp-addr "127.0.0.1:$FANZ_RESP" \
  --data-dir "$work/fanz-data" 2>/dev/null & pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$FANZ_ADMIN/readyz" >/dev/null 2>&1 && redis-cli -p "$REDIS" ping >/dev/null 2>&1 && break
  sleep 0.1
done

# Fill fanz-node: random writes over the key space until every key is almost surely
# written, then check one.
taskset -c 0 target/release/fanz-bench --url "http://$FANZ/kv/{key}" --keys "$KEYS" --writes 1 \
  --value-size 1024 --connections 8 --duration 2 --warmup 0 --json >/dev/null
curl -sf -o /dev/null "http://$FANZ/kv/k0" || { echo "fanz-node fill failed" >&2; exit 1; }

fanz=$(taskset -c 0 target/release/fanz-bench --url "http://$FANZ/kv/{key}" --keys "$KEYS" \
  --connections "$CONNS" --duration "$DURATION" --warmup 1 --json --label fanz)
field() { echo "$1" | sed -E "s/.*\"$2\":([0-9.]+).*/\\1/"; }
fanz_rps=$(field "$fanz" req_per_s)

# redis-benchmark has no duration: calibrate the request count to about DURATION s.
# Redis and fanz-node's Redis-protocol port are filled the same way, with redis-benchmark's keys.
for port in "$REDIS" "$FANZ_RESP"; do
  taskset -c 0 redis-benchmark -p "$port" -t set -d 1024 -r "$KEYS" -n "$((KEYS * 20))" -c "$CONNS" -q >/dev/null 2>&1
done
n=$(awk "BEGIN{printf \"%d\", $fanz_rps * $DURATION}")
best_client=0; best_redis=0; best_resp=0
for round in $(seq "$ROUNDS"); do
  got=$(taskset -c 0 target/release/fanz-bench --protocol client --url "http://$FANZ_ADMIN/{key}" \
    --keys "$KEYS" --connections "$CONNS" --duration "$DURATION" --warmup 1 --json --label client-get)
  rps=$(field "$got" req_per_s)
  echo "round $round: fanz-client GET $rps req/s" >&2
  if awk "BEGIN{exit !($rps > $best_client)}"; then best_client=$rps; client_get=$got; fi
  got=$(taskset -c 0 redis-benchmark -p "$REDIS" -t get -d 1024 -r "$KEYS" -n "$n" -c "$CONNS" --csv | tail -1)
  rps=$(echo "$got" | tr -d '"' | cut -d, -f2)
  echo "round $round: redis GET $rps req/s" >&2
  if awk "BEGIN{exit !($rps > $best_redis)}"; then best_redis=$rps; redis=$got; fi
  got=$(taskset -c 0 redis-benchmark -p "$FANZ_RESP" -t get -d 1024 -r "$KEYS" -n "$n" -c "$CONNS" --csv 2>/dev/null | tail -1)
  rps=$(echo "$got" | tr -d '"' | cut -d, -f2)
  echo "round $round: fanz-node RESP GET $rps req/s" >&2
  if awk "BEGIN{exit !($rps > $best_resp)}"; then best_resp=$rps; resp_get=$got; fi
done
resp_p99=$(echo "$resp_get" | tr -d '"' | cut -d, -f7)
redis_rps=$(echo "$redis" | tr -d '"' | cut -d, -f2)
redis_p99=$(echo "$redis" | tr -d '"' | cut -d, -f7)
client_set=$(taskset -c 0 target/release/fanz-bench --protocol client --url "http://$FANZ_ADMIN/{key}" \
  --keys "$KEYS" --writes 1 --value-size 1024 --connections "$CONNS" --duration "$DURATION" --warmup 1 \
  --json --label client-set)
n=$(awk "BEGIN{printf \"%d\", $(field "$client_set" req_per_s) * $DURATION}")
redis_set=$(taskset -c 0 redis-benchmark -p "$REDIS" -t set -d 1024 -r "$KEYS" -n "$n" -c "$CONNS" --csv | tail -1)
redis_set_rps=$(echo "$redis_set" | tr -d '"' | cut -d, -f2)
redis_set_p99=$(echo "$redis_set" | tr -d '"' | cut -d, -f7)
resp_set=$(taskset -c 0 redis-benchmark -p "$FANZ_RESP" -t set -d 1024 -r "$KEYS" -n "$n" -c "$CONNS" --csv 2>/dev/null | tail -1)
resp_set_rps=$(echo "$resp_set" | tr -d '"' | cut -d, -f2)
resp_set_p99=$(echo "$resp_set" | tr -d '"' | cut -d, -f7)

mc=$(taskset -c 0 memcaslap -s "127.0.0.1:$MEMCACHED" -T 1 -c "$CONNS" -t "${DURATION}s" -X 1024 2>&1 | tail -3)
mc_rps=$(echo "$mc" | awk '/^Run time/ {for (i=1;i<=NF;i++) if ($i == "TPS:") print $(i+1)}')

echo "fanz-node: $fanz"
echo "fanz-client get: $client_get"
echo "fanz-client set: $client_set"
echo "redis: $redis"
echo "redis set: $redis_set"
echo "memcached (memcaslap, 90% get): $mc"
echo
echo "${DURATION}s, $CONNS connections, $KEYS keys of 1 KiB, servers core 1, clients core 0:"
printf '%-26s %12s %8s %14s\n' target req_per_s p99_ms fanz_vs_target
printf '%-26s %12.0f %8s %14s\n' "fanz-node GET /kv/{key}" "$fanz_rps" "$(field "$fanz" p99_ms)" 1.00
printf '%-26s %12.0f %8s %14.2f\n' "redis GET" "$redis_rps" "$redis_p99" "$(awk "BEGIN{print $fanz_rps / $redis_rps}")"
printf '%-26s %12.0f %8s %14.2f\n' "memcached 90% get" "${mc_rps:-0}" "-" "$(awk "BEGIN{m = ${mc_rps:-0}; print (m > 0 ? $fanz_rps / m : 0)}")"
echo
echo "through the client library (fanz-bench --protocol client), against Redis (GET: best of $ROUNDS rounds each):"
printf '%-26s %12s %8s %14s\n' operation fanz_client redis client_vs_redis
printf '%-26s %12.0f %8.0f %14.2f\n' "GET req/s" "$(field "$client_get" req_per_s)" "$redis_rps" "$(awk "BEGIN{print $(field "$client_get" req_per_s) / $redis_rps}")"
printf '%-26s %12s %8s\n' "GET p99 ms" "$(field "$client_get" p99_ms)" "$redis_p99"
printf '%-26s %12.0f %8.0f %14.2f\n' "SET req/s" "$(field "$client_set" req_per_s)" "$redis_set_rps" "$(awk "BEGIN{print $(field "$client_set" req_per_s) / $redis_set_rps}")"
printf '%-26s %12s %8s\n' "SET p99 ms" "$(field "$client_set" p99_ms)" "$redis_set_p99"
echo
echo "the same redis-benchmark against fanz-node's Redis-protocol port and Redis (GET: best of $ROUNDS rounds each):"
printf '%-26s %12s %8s %14s\n' operation fanz_resp redis resp_vs_redis
printf '%-26s %12.0f %8.0f %14.2f\n' "GET req/s" "$best_resp" "$redis_rps" "$(awk "BEGIN{print $best_resp / $redis_rps}")"
printf '%-26s %12s %8s\n' "GET p99 ms" "$resp_p99" "$redis_p99"
printf '%-26s %12.0f %8.0f %14.2f\n' "SET req/s" "$resp_set_rps" "$redis_set_rps" "$(awk "BEGIN{print $resp_set_rps / $redis_set_rps}")"
printf '%-26s %12s %8s\n' "SET p99 ms" "$resp_set_p99" "$redis_set_p99"
