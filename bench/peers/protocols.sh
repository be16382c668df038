#!/usr/bin/env bash
# Cache-hit throughput and latency of one fanz-node over HTTP/1.1, HTTP/2 and HTTP/3,
# in one run, with fanz-bench (closed loop), for 1 KiB and 64 KiB objects proxied from
# an nginx origin serving static files. Beside them, the floor: fanz-bench's own origin
# answering the same sizes over HTTP/1.1 and HTTP/3 (same h3/quinn glue) with nothing
# else to do; its floor-h3 row is compared with floor-h1. And HTTPS/1.1: the same
# node's build serving over TLS (a second process, its certificate the first's
# development one), which pays for encryption as HTTP/3 does; the h3 row is compared
# with it too.
#
# Usage: bench/peers/protocols.sh      (DURATION=10 CONNS=32 ROUNDS=2 to change;
#        QUIC_MTU=8952 lets QUIC use jumbo-frame-sized datagrams on both ends;
#        CHARTS=dir draws each size's latency percentiles, protocol by protocol, as
#        dir/protocols-1k.svg and dir/protocols-64k.svg)
# Runs as root (nginx workers too, to read the temporary directory). The node runs
# pinned to core 1, fanz-bench to core 0. Everything listens on 127.0.0.1 and is
# stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}; CONNS=${CONNS:-32}; ROUNDS=${ROUNDS:-2}; QUIC_MTU=${QUIC_MTU:-1452}
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ && "$CONNS" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "DURATION, CONNS and ROUNDS must be positive whole numbers" >&2; exit 2
fi
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
cargo build --release -q -p fanz-node -p fanz-bench

work=$(mktemp -d /tmp/fanz-proto-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

ORIGIN=127.0.0.1:18380; HTTP=127.0.0.1:18381; ADMIN=127.0.0.1:18382; H3=127.0.0.1:18383
mkdir -p "$work/www" "$work/tmp"
head -c 1024 /dev/urandom > "$work/www/1k.bin"
head -c 65536 /dev/urandom > "$work/www/64k.bin"
cat > "$work/origin.conf" <<CONF
user root;
worker_processes 1;
daemon off;
pid $work/origin.pid;
error_log $work/origin.error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/tmp/b; proxy_temp_path $work/tmp/p; fastcgi_temp_path $work/tmp/f;
  uwsgi_temp_path $work/tmp/u; scgi_temp_path $work/tmp/s;
  server { listen $ORIGIN; root $work/www; expires 1h; }
}
CONF
nginx -e "$work/origin.early.log" -c "$work/origin.conf" & pids+=($!)
taskset -c 1 target/release/fanz-node --origin "http://$ORIGIN" --http-addr "$HTTP" --admin-addr "$ADMIN" \
  --h3-addr "$H3" --resp-addr 127.0.0.1:18389 --h3-max-udp-payload "$QUIC_MTU" --data-dir "$work/fanz-data" 2>"$work/fanz.log" & pids+=($!)
# The floor: fanz-bench's origin serving the same sizes over HTTP/1.1 and over HTTP/3
# through the same h3 and h3-quinn glue, one thread, same core, nothing cached or
# logged: what no server on these stacks can beat here.
FLOOR=127.0.0.1:18384; FLOOR_H3=127.0.0.1:18385
# HTTPS/1.1: a second node on the same core, TLS on its main listener with the first
# node's development certificate (made at its start, in its data directory).
HTTPS=127.0.0.1:18386; HTTPS_ADMIN=127.0.0.1:18387; HTTPS_H3=127.0.0.1:18388
for _ in $(seq 100); do [ -s "$work/fanz-data/dev-key.pem" ] && break; sleep 0.1; done
taskset -c 1 target/release/fanz-node --origin "http://$ORIGIN" --http-addr "$HTTPS" --admin-addr "$HTTPS_ADMIN" \
  --h3-addr "$HTTPS_H3" --resp-addr 127.0.0.1:18390 --tls-cert "$work/fanz-data/dev-cert.pem" --tls-key "$work/fanz-data/dev-key.pem" \
  --data-dir "$work/fanz-tls" 2>"$work/fanz-tls.log" & pids+=($!)
taskset -c 1 target/release/fanz-bench origin --addr "$FLOOR" --h3-addr "$FLOOR_H3" \
  --cert-out "$work/floor.pem" 2>/dev/null & pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && curl -sf "http://$HTTPS_ADMIN/readyz" >/dev/null 2>&1 \
    && [ -s "$work/floor.pem" ] && break
  sleep 0.1
done

bench() { # $1 protocol, $2 object -> JSON
  local url args=()
  if [ "$1" = floor-h1 ]; then
    taskset -c 0 target/release/fanz-bench --protocol h1 --url "http://$FLOOR/$2/x" \
      --connections "$CONNS" --duration "$DURATION" --warmup 2 --json
    return
  elif [ "$1" = floor-h3 ]; then
    taskset -c 0 target/release/fanz-bench --protocol h3 --url "https://localhost:${FLOOR_H3##*:}/$2/x" \
      --connect "$FLOOR_H3" --ca-cert "$work/floor.pem" --quic-mtu "$QUIC_MTU" \
      --connections "$CONNS" --duration "$DURATION" --warmup 2 --json
    return
  elif [ "$1" = https ]; then
    taskset -c 0 target/release/fanz-bench --protocol h1 --url "https://localhost:${HTTPS##*:}/$2.bin" \
      --connect "$HTTPS" --ca-cert "$work/fanz-data/dev-cert.pem" \
      --connections "$CONNS" --duration "$DURATION" --warmup 2 --json
    return
  elif [ "$1" = h3 ]; then
    url="https://localhost:${H3##*:}/$2.bin"; args=(--connect "$H3" --ca-cert "$work/fanz-data/dev-cert.pem" --quic-mtu "$QUIC_MTU")
  else
    url="http://$HTTP/$2.bin"
  fi
  taskset -c 0 target/release/fanz-bench --protocol "$1" --url "$url" "${args[@]}" \
    --connections "$CONNS" --duration "$DURATION" --warmup 2 --json
}
# Warm every protocol's key (HTTP/3 requests are https:// URLs: their own entries).
for p in h1 h2 https h3; do for f in 1k 64k; do
  DURATION=1 CONNS=1 bench "$p" "$f" >/dev/null
done; done

declare -A best
for round in $(seq "$ROUNDS"); do
  for f in 1k 64k; do for p in h1 h2 https h3 floor-h1 floor-h3; do
    out=$(bench "$p" "$f")
    rps=$(echo "$out" | sed -E 's/.*"req_per_s":([0-9.]+).*/\1/')
    echo "round $round  $f  $p  $out"
    if [ -z "${best[$f-$p]:-}" ] || awk "BEGIN{exit !($rps > $(echo "${best[$f-$p]}" | sed -E 's/.*"req_per_s":([0-9.]+).*/\1/'))}"; then
      best[$f-$p]=$out
    fi
  done; done
done
echo
echo "best of $ROUNDS rounds, ${DURATION}s each, $CONNS connections, QUIC max UDP payload $QUIC_MTU, node core 1, fanz-bench core 0:"
printf '%-5s %-8s %10s %8s %8s %8s %10s\n' size proto req_per_s p50_ms p99_ms errors vs_h1
for f in 1k 64k; do
  h1=$(echo "${best[$f-h1]}" | sed -E 's/.*"req_per_s":([0-9.]+).*/\1/')
  for p in h1 h2 https h3 floor-h1 floor-h3; do
    # The floor's HTTP/3 is compared with the floor's HTTP/1.1.
    [ "$p" = floor-h3 ] && h1=$(echo "${best[$f-floor-h1]}" | sed -E 's/.*"req_per_s":([0-9.]+).*/\1/')
    o=${best[$f-$p]}
    field() { echo "$o" | sed -E "s/.*\"$1\":([0-9.]+).*/\\1/"; }
    printf '%-5s %-8s %10.0f %8.3f %8.3f %8s %10.2f\n' "$f" "$p" "$(field req_per_s)" "$(field p50_ms)" "$(field p99_ms)" "$(field errors)" "$(awk "BEGIN{print $(field req_per_s)/$h1}")"
  done
done
rps() { echo "${best[$1]}" | sed -E 's/.*"req_per_s":([0-9.]+).*/\1/'; }
for f in 1k 64k; do
  echo "$f: node h3 vs node HTTPS/1.1 (both encrypted): $(awk "BEGIN{printf \"%.2f\", $(rps "$f-h3") / $(rps "$f-https")}")"
done
if [ -n "${CHARTS:-}" ]; then
  mkdir -p "$CHARTS"
  for f in 1k 64k; do
    runs=()
    for p in h1 https h2 h3; do echo "${best[$f-$p]}" > "$work/$f-$p.json"; runs+=("$p=$work/$f-$p.json"); done
    target/release/fanz-bench chart --out "$CHARTS/protocols-$f.svg" \
      --title "$f hits by protocol, closed loop, $CONNS connections (best of $ROUNDS)" "${runs[@]}"
    echo "chart: $CHARTS/protocols-$f.svg"
  done
fi
