#!/usr/bin/env bash
# Cache-hit throughput and latency over HTTP/1.1, in one run: fanz-node, nginx
# proxy_cache and Varnish (malloc storage), all in front of the same origin
# (`fanz-bench origin`), plus nginx serving the same bytes as static files (the
# practical ceiling for an HTTP server here).
#
# Usage: bench/peers/http_hits.sh  (DURATION=6 CONNS=32 ROUNDS=3 OBJECTS=100 to change;
#        SIZES="1k 64k 1m" the object sizes; OPEN_LOOP=0 skips the open loop;
#        CHART=file.svg draws its percentiles; FANZ_BIN=path measures another
#        fanz-node build, FANZ_ARGS="--log-level warn" passes it flags; BASE_BIN=path
#        adds a second fanz-node build, "base", to every round: the A/B of a change
#        with the peers beside it; BASE_ARGS passes that one flags instead of
#        FANZ_ARGS, so BASE_BIN=target/release/fanz-node BASE_ARGS="--sendfile-min-size
#        32KiB" puts a setting beside the defaults)
# fanz-node runs at its default settings (log level info, the HTTP/3 listener on and
# advertised in Alt-Svc; the load uses HTTP/1.1), as a new user runs it.
# wrk requests OBJECTS distinct URLs of each size in turn.
# Runs as root (nginx workers too, to read the temporary directory).
# Needs: nginx, varnish and wrk (Debian packages); installs them if missing.
# Servers run pinned to core 1, wrk to core 0 (one worker each side). Everything
# listens on 127.0.0.1 and is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-6}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
OBJECTS=${OBJECTS:-100}
read -r -a sizes <<< "${SIZES:-1k 64k 1m}"
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ && "$CONNS" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ && "$OBJECTS" =~ ^[1-9][0-9]*$ ]]; then
  echo "DURATION, CONNS, ROUNDS and OBJECTS must be positive whole numbers" >&2; exit 2
fi
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v varnishd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk varnish >/dev/null
fi
cargo build --release -q -p fanz-node -p fanz-bench
FANZ_BIN=${FANZ_BIN:-target/release/fanz-node}
read -r -a fanz_args <<< "${FANZ_ARGS:-}"
read -r -a base_args <<< "${BASE_ARGS:-${FANZ_ARGS:-}}"

work=$(mktemp -d /tmp/fanz-bench-XXXX)
chmod 755 "$work"   # varnishd's working directory lives inside
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

ORIGIN=127.0.0.1:18180; NGINX=127.0.0.1:18181; FANZ=127.0.0.1:18182; FANZ_ADMIN=127.0.0.1:18183
VARNISH=127.0.0.1:18184; STATIC=127.0.0.1:18185
BASE=127.0.0.1:18186; BASE_ADMIN=127.0.0.1:18187
mkdir -p "$work/nginx-cache" "$work/tmp" "$work/varnish"
# The static server holds the same bytes the origin serves ('x' repeated).
bytes_of() { case "$1" in *k) echo $(( ${1%k} << 10 ));; *m) echo $(( ${1%m} << 20 ));; *) echo "$1";; esac; }
for f in "${sizes[@]}"; do
  mkdir -p "$work/www/$f"
  head -c "$(bytes_of "$f")" /dev/zero | tr '\0' x > "$work/www/$f/obj"
  for i in $(seq "$OBJECTS"); do ln "$work/www/$f/obj" "$work/www/$f/obj$i"; done
done

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
nginx_conf static "server { listen $STATIC; root $work/www; expires 1h; }"
cat > "$work/default.vcl" <<VCL
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "${ORIGIN##*:}"; }
VCL
nginx_conf proxy "proxy_cache_path $work/nginx-cache keys_zone=c:64m max_size=1g inactive=1h;
  upstream o { server $ORIGIN; keepalive 32; }
  server { listen $NGINX;
    location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_cache c; proxy_cache_lock on; add_header X-Cache \$upstream_cache_status; } }"

target/release/fanz-bench origin --addr "$ORIGIN" 2>"$work/origin.log" & pids+=($!)
taskset -c 1 nginx -e "$work/proxy.early.log" -c "$work/proxy.conf" & pids+=($!)
taskset -c 1 nginx -e "$work/static.early.log" -c "$work/static.conf" & pids+=($!)
taskset -c 1 varnishd -F -j none -n "$work/varnish" -a "$VARNISH" -f "$work/default.vcl" \
  -s malloc,256m -p default_ttl=0 -p default_grace=0 >"$work/varnish.log" 2>&1 & pids+=($!)
# Each node's Redis-protocol port is on, as by default, set through the environment
# (which a BASE_BIN from before the setting ignores).
FANZ_RESP_ADDR=127.0.0.1:18196 taskset -c 1 "$FANZ_BIN" --origin "http://$ORIGIN" --http-addr "$FANZ" --admin-addr "$FANZ_ADMIN" \
  --h3-addr 127.0.0.1:18188 --data-dir "$work/fanz-data" "${fanz_args[@]}" >"$work/fanz.log" 2>&1 & pids+=($!)
fanz_targets=("fanz $FANZ")
if [ -n "${BASE_BIN:-}" ]; then
  FANZ_RESP_ADDR=127.0.0.1:18197 taskset -c 1 "$BASE_BIN" --origin "http://$ORIGIN" --http-addr "$BASE" --admin-addr "$BASE_ADMIN" \
    --h3-addr 127.0.0.1:18189 --data-dir "$work/base-data" "${base_args[@]}" >"$work/base.log" 2>&1 & pids+=($!)
  fanz_targets=("base $BASE" "fanz $FANZ")
fi

for _ in $(seq 100); do
  curl -sf "http://$FANZ_ADMIN/readyz" >/dev/null 2>&1 && curl -sf "http://$NGINX/1k/obj" >/dev/null 2>&1 \
    && { [ -z "${BASE_BIN:-}" ] || curl -sf "http://$BASE_ADMIN/readyz" >/dev/null 2>&1; } \
    && curl -sf "http://$VARNISH/1k/obj" >/dev/null 2>&1 && break
  sleep 0.1
done
for target in "$NGINX" "$FANZ" "$VARNISH" ${BASE_BIN:+"$BASE"}; do for f in "${sizes[@]}"; do for i in $(seq "$OBJECTS"); do
  curl -sf -o /dev/null "http://$target/$f/obj$i"; curl -sf -o /dev/null "http://$target/$f/obj$i"
done; done; done
echo "check: nginx $(curl -sI "http://$NGINX/1k/obj1" | grep -i x-cache | tr -d '\r'), fanz $(curl -sI "http://$FANZ/1k/obj1" | grep -i cache-status | tr -d '\r'), varnish $(curl -sI "http://$VARNISH/1k/obj1" | grep -i '^age' | tr -d '\r')"

run() { # $1 url prefix -> "req_per_s p99_ms"
  taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s bench/peers/objects.lua "$1" -- "$OBJECTS" > "$work/wrk.out"
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.out")
  echo "$rps $p99"
}

printf '\n%-6s %-8s %12s %10s\n' size target req_per_s p99_ms
declare -A all_rps all_p99
for round in $(seq "$ROUNDS"); do
  for f in "${sizes[@]}"; do
    for pair in "nginx $NGINX" "varnish $VARNISH" "static $STATIC" "${fanz_targets[@]}"; do
      set -- $pair
      read -r rps p99 < <(run "http://$2/$f/obj")
      printf '%-6s %-8s %12s %10s   (round %s)\n' "$f" "$1" "$rps" "$p99" "$round"
      all_rps[$f-$1]+="$rps "; all_p99[$f-$1]+="$p99 "
    done
  done
done
med() { printf '%s\n' $1 | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
declare -A med_rps
echo
echo "median of $ROUNDS rounds, ${DURATION}s each, $CONNS connections, $OBJECTS objects, servers core 1, wrk core 0:"
printf '%-6s %-8s %12s %10s %16s\n' size target req_per_s p99_ms fanz_vs_target
names=(nginx varnish static ${BASE_BIN:+base} fanz)
for f in "${sizes[@]}"; do
  for t in "${names[@]}"; do med_rps[$f-$t]=$(med "${all_rps[$f-$t]}"); done
  for t in "${names[@]}"; do
    printf '%-6s %-8s %12s %10s %16s\n' "$f" "$t" "${med_rps[$f-$t]}" "$(med "${all_p99[$f-$t]}")" \
      "$(awk -v z="${med_rps[$f-fanz]}" -v t="${med_rps[$f-$t]}" 'BEGIN {printf "%.2f", z / t}')"
  done
done
{ [ "${OPEN_LOOP:-1}" = 0 ] || [ -z "${med_rps[1k-nginx]:-}" ]; } && exit 0

# Open loop at half of nginx's peak 1 KiB rate: latency from the intended send time
# (fanz-bench corrects coordinated omission), the same schedule for every target.
rate=$(awk "BEGIN{printf \"%d\", ${med_rps[1k-nginx]} / 2}")
echo
echo "open loop at $rate req/s (half of nginx proxy_cache's 1 KiB peak), ${DURATION}s, $CONNS connections:"
printf '%-8s %12s %8s %8s %8s %8s\n' target req_per_s p50_ms p99_ms p999_ms max_ms
for pair in "nginx $NGINX" "varnish $VARNISH" "fanz $FANZ"; do
  set -- $pair
  out=$(taskset -c 0 target/release/fanz-bench --url "http://$2/1k/obj1" --rate "$rate" \
    --connections "$CONNS" --duration "$DURATION" --warmup 1 --json --label "$1")
  field() { echo "$out" | sed -E "s/.*\"$1\":([0-9.]+).*/\\1/"; }
  printf '%-8s %12.0f %8.3f %8.3f %8.3f %8.3f\n' "$1" "$(field req_per_s)" "$(field p50_ms)" "$(field p99_ms)" "$(field p999_ms)" "$(field max_ms)"
  echo "$out" > "$work/open-$1.json"
done
if [ -n "${CHART:-}" ]; then
  target/release/fanz-bench chart --out "$CHART" --title "1 KiB hits, open loop at $rate req/s" \
    nginx="$work/open-nginx.json" varnish="$work/open-varnish.json" fanz="$work/open-fanz.json"
  echo "chart: $CHART"
fi
