#!/usr/bin/env bash
# Hit ratio under a Zipf workload with the cache sized well below the working set, in
# one run: fanz-node (memory tier only), Varnish (malloc storage) and nginx
# proxy_cache (its cache directory on tmpfs, max_size capped the same), each in front
# of its own `fanz-bench origin`. Hit ratio = 1 - origin requests / client requests,
# counted at the origin, so every target is measured the same way.
#
# Usage: bench/peers/hit_ratio.sh   (OBJECTS=100000 SIZE=1024 CACHE_MB=10 ZIPF=0.99
#                                    DURATION=30 RATE=10000 to change; default cache
#                                    = ~10% of the working set). The open loop sends
#                                    every target the same requests (same seed, rate);
#                                    NODE=path/to/fanz-node to measure another build).
# Needs nginx and varnish (installs them if missing); runs as root. Everything on
# 127.0.0.1, stopped and removed on exit (the tmpfs too).
set -euo pipefail
cd "$(dirname "$0")/../.."
OBJECTS=${OBJECTS:-100000}; SIZE=${SIZE:-1024}; CACHE_MB=${CACHE_MB:-10}; ZIPF=${ZIPF:-0.99}; DURATION=${DURATION:-30}
RATE=${RATE:-10000}
for v in OBJECTS SIZE CACHE_MB DURATION RATE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive whole number" >&2; exit 2; }
done
if ! command -v nginx >/dev/null || ! command -v varnishd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light varnish >/dev/null
fi
cargo build --release -q -p fanz-node -p fanz-bench
NODE=${NODE:-target/release/fanz-node}
work=$(mktemp -d /tmp/fanz-ratio-XXXX); chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  umount "$work/nginx-cache" 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT INT TERM
mkdir -p "$work/nginx-cache" "$work/tmp" "$work/varnish"
# nginx's cache manager trims to max_size lazily: leave it room to overshoot.
mount -t tmpfs -o size=$((CACHE_MB * 4 + 256))m tmpfs "$work/nginx-cache"

O_FANZ=127.0.0.1:18681; O_VARNISH=127.0.0.1:18682; O_NGINX=127.0.0.1:18683
FANZ=127.0.0.1:18684; FANZ_ADMIN=127.0.0.1:18685; VARNISH=127.0.0.1:18686; NGINX=127.0.0.1:18687
for o in "$O_FANZ" "$O_VARNISH" "$O_NGINX"; do
  target/release/fanz-bench origin --addr "$o" --default-size "$SIZE" 2>>"$work/origin.log" & pids+=($!)
done
FANZ_RESP_ADDR=off taskset -c 1 "$NODE" --origin "http://$O_FANZ" --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" \
  --h3-addr off --memory-capacity "${CACHE_MB}MiB" --disk-capacity 0 --data-dir "$work/fanz-data" \
  --log-level warn & pids+=($!)
cat > "$work/default.vcl" <<VCL
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "${O_VARNISH##*:}"; }
VCL
taskset -c 1 varnishd -F -j none -n "$work/varnish" -a "$VARNISH" -f "$work/default.vcl" \
  -s "malloc,${CACHE_MB}m" -p default_ttl=0 -p default_grace=0 >"$work/varnish.log" 2>&1 & pids+=($!)
cat > "$work/nginx.conf" <<CONF
user root;
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/tmp/b; proxy_temp_path $work/tmp/p; fastcgi_temp_path $work/tmp/f;
  uwsgi_temp_path $work/tmp/u; scgi_temp_path $work/tmp/s;
  proxy_cache_path $work/nginx-cache keys_zone=c:16m max_size=${CACHE_MB}m inactive=1h;
  upstream o { server $O_NGINX; keepalive 32; }
  server { listen $NGINX;
    location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache c; proxy_cache_lock on; } }
}
CONF
taskset -c 1 nginx -e "$work/nginx.early.log" -c "$work/nginx.conf" & pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$FANZ_ADMIN/readyz" >/dev/null 2>&1 && curl -sf -o /dev/null "http://$NGINX/x" 2>/dev/null \
    && curl -sf -o /dev/null "http://$VARNISH/x" 2>/dev/null && break
  sleep 0.1
done

origin_count() { curl -sf "http://$1/_stats" | sed -E 's/.*"requests":([0-9]+).*/\1/'; }
# nginx enforces max_size lazily (its cache manager removes at most manager_files
# files per pass), so its cache can hold more than the cap: sample what it really
# holds, to compare at equal bytes too.
sample_nginx() {
  # (du warns when nginx removes a file while it counts: harmless, hidden)
  while sleep 0.5; do du -sk "$work/nginx-cache" 2>/dev/null | cut -f1; done > "$work/nginx-du"
}
measure() { # label url origin -> one table line
  local before after out requests errors fetched
  before=$(origin_count "$3")
  out=$(taskset -c 0 target/release/fanz-bench --url "http://$2/obj/{key}" --keys "$OBJECTS" --zipf "$ZIPF" \
    --rate "$RATE" --connections 32 --duration "$DURATION" --warmup 0 --json --label "$1")
  after=$(origin_count "$3")
  requests=$(echo "$out" | sed -E 's/.*"requests":([0-9]+).*/\1/')
  errors=$(echo "$out" | sed -E 's/.*"errors":([0-9]+).*/\1/')
  fetched=$((after - before))
  printf '%-22s %12s %14s %10s   (errors %s)\n' "$1" "$requests" "$fetched" \
    "$(awk "BEGIN{printf \"%.4f\", 1 - $fetched / ($requests + $errors)}")" "$errors"
}
printf '\n%-22s %12s %14s %10s\n' target requests origin_fetches hit_ratio
measure "fanz ${CACHE_MB} MiB" "$FANZ" "$O_FANZ"
measure "varnish ${CACHE_MB} MiB" "$VARNISH" "$O_VARNISH"
sample_nginx & sampler=$!; pids+=($sampler)
measure "nginx max_size ${CACHE_MB}m" "$NGINX" "$O_NGINX"
kill "$sampler" 2>/dev/null || true
nginx_mib=$(( ($(sort -n "$work/nginx-du" | tail -1) + 1023) / 1024 ))
echo "nginx's cache directory peaked at ${nginx_mib} MiB (its keys zone, 16 MiB of shared memory, not counted)"
if [ "$nginx_mib" -gt "$CACHE_MB" ]; then
  # The same node again, cold, with the memory nginx really used.
  O_FANZ2=127.0.0.1:18688; FANZ2=127.0.0.1:18689; FANZ2_ADMIN=127.0.0.1:18690
  target/release/fanz-bench origin --addr "$O_FANZ2" --default-size "$SIZE" 2>>"$work/origin.log" & pids+=($!)
  FANZ_RESP_ADDR=off taskset -c 1 "$NODE" --origin "http://$O_FANZ2" --http-addr "$FANZ2" --admin-addr "$FANZ2_ADMIN" \
    --h3-addr off --memory-capacity "${nginx_mib}MiB" --disk-capacity 0 --data-dir "$work/fanz-data2" \
    --log-level warn & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://$FANZ2_ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  measure "fanz ${nginx_mib} MiB (as nginx)" "$FANZ2" "$O_FANZ2"
fi
if [ -s "$work/nginx.error.log" ]; then echo "nginx errors (last 3):"; tail -3 "$work/nginx.error.log"; fi
echo "($OBJECTS objects of $SIZE bytes, Zipf $ZIPF, ${CACHE_MB} MiB of cache each unless said, ${DURATION}s from cold)"
