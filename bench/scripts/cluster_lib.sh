# Sourced by the cluster benchmarks: three fanz-node processes on 127.0.0.1, one
# cluster-init, every node joining through n1. With port prefix P (e.g. 186), node
# i serves HTTP on P1i, admin on P2i, gossip on P3i, the peer protocol on P4i and
# HTTP/3 on P5i (on, as by default; the load does not use it), at the default log level.
# The caller owns `pids` (the processes to stop) and the work directory.

# cluster_start BIN WORK P: starts the three nodes of BIN with data under WORK, and
# returns once each is ready and n1 sees three members alive.
cluster_start() {
  local bin=$1 work=$2 p=$3 i
  "$bin" cluster-init "$work/pki" --nodes 3 >/dev/null
  for i in 1 2 3; do
    # The Redis-protocol port through the environment: builds from before it ignore it.
    FANZ_RESP_ADDR="127.0.0.1:${p}6$i" "$bin" --cluster-dir "$work/pki/node-$i" --node-id "n$i" \
      --http-addr "127.0.0.1:${p}1$i" --admin-addr "127.0.0.1:${p}2$i" --h3-addr "127.0.0.1:${p}5$i" \
      --gossip-addr "127.0.0.1:${p}3$i" --peer-addr "127.0.0.1:${p}4$i" --seeds "127.0.0.1:${p}31" \
      --data-dir "$work/d$i" 2>>"$work/n$i.log" & pids+=($!)
  done
  for i in 1 2 3; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:${p}2$i/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  for _ in $(seq 100); do
    [ "$(curl -s "http://127.0.0.1:${p}21/cluster" | grep -o '"alive"' | wc -l)" = 3 ] && return 0; sleep 0.1
  done
  echo "the cluster in $work did not converge" >&2; return 1
}

# cluster_stop: stops every process in `pids`.
cluster_stop() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
