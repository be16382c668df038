#!/usr/bin/env bash
# Cache-hit throughput and latency over HTTP/1.1: fanz-node against nginx proxy_cache,
# both in front of the same origin (nginx serving static files), in one run.
#
# Usage: bench/peers/http_hits.sh            (DURATION=10 CONNS=32 ROUNDS=2 to change)
# Runs as root (nginx workers too, to read the temporary directory).
# Needs: nginx and wrk (Debian packages nginx-light, wrk); installs them if missing.
# Servers run pinned to core 1, wrk to core 0 (one worker each side). Everything
# listens on 127.0.0.1 and is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ && "$CONNS" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "DURATION, CONNS and ROUNDS must be positive whole numbers" >&2; exit 2
fi
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
cargo build --release -q -p fanz-node

work=$(mktemp -d /tmp/fanz-bench-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

ORIGIN=127.0.0.1:18180; NGINX=127.0.0.1:18181; FANZ=127.0.0.1:18182; FANZ_ADMIN=127.0.0.1:18183
mkdir -p "$work/www" "$work/nginx-cache" "$work/tmp"
head -c 1024 /dev/urandom > "$work/www/1k.bin"
head -c 65536 /dev/urandom > "$work/www/64k.bin"

nginx_conf() { # $1 name, $2 server block
  cat > "$work/$1.conf" <<CONF
user root;
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/tmp/$1-body; proxy_temp_path $work/tmp/$1-proxy;
  fastcgi_temp_path $work/tmp/$1-fcgi; uwsgi_temp_path $work/tmp/$1-uwsgi; scgi_temp_path $work/tmp/$1-scgi;
  sendfile on; tcp_nopush off; keepalive_requests 1000000;
  $2
}
CONF
}
nginx_conf origin "server { listen $ORIGIN; root $work/www; expires 1h; }"
nginx_conf proxy "proxy_cache_path $work/nginx-cache keys_zone=c:64m max_size=1g inactive=1h;
  upstream o { server $ORIGIN; keepalive 32; }
  server { listen $NGINX;
    location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_cache c; proxy_cache_lock on; add_header X-Cache \$upstream_cache_status; } }"

nginx -e "$work/origin.early.log" -c "$work/origin.conf" & pids+=($!)
taskset -c 1 nginx -e "$work/proxy.early.log" -c "$work/proxy.conf" & pids+=($!)
taskset -c 1 target/release/fanz-node --origin "http://$ORIGIN" --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" \
  --data-dir "$work/fanz-data" --log-level warn & pids+=($!)

for _ in $(seq 100); do
  curl -sf "http://$FANZ_ADMIN/readyz" >/dev/null 2>&1 && curl -sf "http://$NGINX/1k.bin" >/dev/null 2>&1 && break
  sleep 0.1
done
for target in "$NGINX" "$FANZ"; do for f in 1k 64k; do
  curl -sf -o /dev/null "http://$target/$f.bin"; curl -sf -o /dev/null "http://$target/$f.bin"
done; done
echo "check: nginx $(curl -sI "http://$NGINX/1k.bin" | grep -i x-cache | tr -d '\r'), fanz $(curl -sI "http://$FANZ/1k.bin" | grep -i cache-status | tr -d '\r')"

run() { # $1 url -> "req_per_s p99_ms"
  taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$1" > "$work/wrk.out"
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.out")
  echo "$rps $p99"
}

printf '\n%-6s %-8s %12s %10s\n' size target req_per_s p99_ms
declare -A best_rps best_p99
for round in $(seq "$ROUNDS"); do
  for f in 1k 64k; do
    for pair in "nginx $NGINX" "fanz $FANZ"; do
      set -- $pair
      read -r rps p99 < <(run "http://$2/$f.bin")
      printf '%-6s %-8s %12s %10s   (round %s)\n' "$f" "$1" "$rps" "$p99" "$round"
      key="$f-$1"
      if [ -z "${best_rps[$key]:-}" ] || awk "BEGIN{exit !($rps > ${best_rps[$key]})}"; then
        best_rps[$key]=$rps; best_p99[$key]=$p99
      fi
    done
  done
done
echo
echo "best of $ROUNDS rounds, ${DURATION}s each, $CONNS connections, server core 1, wrk core 0:"
printf '%-6s %14s %14s %8s %12s %12s\n' size nginx_req_s fanz_req_s ratio nginx_p99_ms fanz_p99_ms
for f in 1k 64k; do
  n=${best_rps[$f-nginx]}; z=${best_rps[$f-fanz]}
  printf '%-6s %14s %14s %8s %12s %12s\n' "$f" "$n" "$z" "$(awk "BEGIN{printf \"%.2f\", $z/$n}")" "${best_p99[$f-nginx]}" "${best_p99[$f-fanz]}"
done
