#!/usr/bin/env bash
# Hit ratio with and without query normalisation (issue 20): a Zipf workload where a
# share of requests carry random utm_* parameters, as shared links do. In one run:
# fanz-node without rules, fanz-node with a rule (`drop_params = ["utm_*"]`,
# `query = "sort"`), and Varnish with the equivalent VCL (regsuball + std.querysort),
# each in front of its own `fanz-bench origin`, each with room for every object (so
# only the keys split the cache, not its size). Hit ratio = 1 - origin requests /
# client requests, counted at the origin.
#
# Usage: bench/peers/query_normalisation.sh   (OBJECTS=10000 ZIPF=0.99 TRACKING=0.3
#        DURATION=20 RATE=5000 to change). Needs varnish (installs it if missing);
#        runs as root. Everything on 127.0.0.1, stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
OBJECTS=${OBJECTS:-10000}; ZIPF=${ZIPF:-0.99}; TRACKING=${TRACKING:-0.3}
DURATION=${DURATION:-20}; RATE=${RATE:-5000}
for v in OBJECTS DURATION RATE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive whole number" >&2; exit 2; }
done
if ! command -v varnishd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq varnish >/dev/null
fi
cargo build --release -q -p fanz-node -p fanz-bench
work=$(mktemp -d /tmp/fanz-query-XXXX); chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

O_PLAIN=127.0.0.1:18781; O_RULE=127.0.0.1:18782; O_VARNISH=127.0.0.1:18783
PLAIN=127.0.0.1:18784; PLAIN_ADMIN=127.0.0.1:18785; RULE=127.0.0.1:18786; RULE_ADMIN=127.0.0.1:18787
VARNISH=127.0.0.1:18788
for o in "$O_PLAIN" "$O_RULE" "$O_VARNISH"; do
  target/release/fanz-bench origin --addr "$o" 2>>"$work/origin.log" & pids+=($!)
done
node() { # origin http admin data [config]
  FANZ_RESP_ADDR=off taskset -c 1 target/release/fanz-node --origin "http://$1" --http-addr "$2" --admin-addr "$3" \
    --h3-addr off --memory-capacity 256MiB --disk-capacity 0 --data-dir "$work/$4" --log-level warn "${@:5}" &
  pids+=($!)
}
cat > "$work/rules.toml" <<TOML
[[rules]]
query = "sort"
drop_params = ["utm_*"]
TOML
node "$O_PLAIN" "$PLAIN" "$PLAIN_ADMIN" plain
node "$O_RULE" "$RULE" "$RULE_ADMIN" rule --config "$work/rules.toml"
cat > "$work/default.vcl" <<VCL
vcl 4.1;
import std;
backend origin { .host = "127.0.0.1"; .port = "${O_VARNISH##*:}"; }
sub vcl_recv {
  set req.url = regsuball(req.url, "utm_[a-z]+=[^&]*&?", "");
  set req.url = regsub(req.url, "[?&]$", "");
  set req.url = std.querysort(req.url);
}
VCL
taskset -c 1 varnishd -F -j none -n "$work/varnish" -a "$VARNISH" -f "$work/default.vcl" \
  -s malloc,256m >"$work/varnish.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$PLAIN_ADMIN/readyz" >/dev/null 2>&1 && curl -sf "http://$RULE_ADMIN/readyz" >/dev/null 2>&1 \
    && curl -sf -o /dev/null "http://$VARNISH/x" 2>/dev/null && break
  sleep 0.1
done

origin_count() { curl -sf "http://$1/_stats" | sed -E 's/.*"requests":([0-9]+).*/\1/'; }
measure() { # label url origin tracking -> one table line
  local before after out requests errors fetched
  before=$(origin_count "$3")
  out=$(taskset -c 0 target/release/fanz-bench --url "http://$2/obj/{key}" --keys "$OBJECTS" --zipf "$ZIPF" \
    --tracking-params "$4" --rate "$RATE" --connections 32 --duration "$DURATION" --warmup 0 --json --label "$1")
  after=$(origin_count "$3")
  requests=$(echo "$out" | sed -E 's/.*"requests":([0-9]+).*/\1/')
  errors=$(echo "$out" | sed -E 's/.*"errors":([0-9]+).*/\1/')
  fetched=$((after - before))
  printf '%-34s %10s %14s %10s   (errors %s)\n' "$1" "$requests" "$fetched" \
    "$(awk "BEGIN{printf \"%.4f\", 1 - $fetched / ($requests + $errors)}")" "$errors"
}
printf '\n%-34s %10s %14s %10s\n' target requests origin_fetches hit_ratio
measure "fanz, no rule, ${TRACKING} utm" "$PLAIN" "$O_PLAIN" "$TRACKING"
measure "fanz, drop_params utm_*, ${TRACKING} utm" "$RULE" "$O_RULE" "$TRACKING"
measure "varnish, regsuball+querysort" "$VARNISH" "$O_VARNISH" "$TRACKING"
echo "($OBJECTS objects, Zipf $ZIPF, ${TRACKING} of requests with random utm_source/utm_campaign, ${RATE}/s for ${DURATION}s, each target from cold)"
