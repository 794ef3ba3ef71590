#!/bin/sh
# Three crbroker nodes and one nats-server on this machine (cluster mode), measured with
# crbroker-bench: connection requests local vs cross-node, and how long until 3 x N CPEs are
# online. Needs: nats-server (apt-get install nats-server), release builds of crbroker and
# crbroker-bench, `ulimit -n` of at least 20000 available.
# Usage: bench/cluster.sh [N] [RATE]      requests local vs cross-node, 3 x N online
#        bench/cluster.sh kill [N]        kill -9 of a node holding N CPEs: time until all are
#                                         logged in again on the other nodes and until all
#                                         answer connection requests again (SPREAD=ms: CPEs
#                                         spread their reconnects over that long)
set -eu
MODE=requests
if [ "${1:-}" = kill ]; then MODE=kill; shift; fi
N=${1:-19000}
RATE=${2:-2000}
BIN=${BIN:-target/release}
OUT=${OUT:-/tmp/crb-cluster}
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$NATS" ] || { echo "nats-server not found: apt-get install nats-server" >&2; exit 2; }
ulimit -n 20000
rm -rf "$OUT"; mkdir -p "$OUT"
"$BIN/crbroker-bench" gen-config --out "$OUT/gen" -n $((3 * N)) >/dev/null
"$NATS" -a 127.0.0.1 -p 14222 -m 18222 >"$OUT/nats.log" 2>&1 &
echo $! >"$OUT/nats.pid"
sleep 0.5
for i in 1 2 3; do
  d="$OUT/gen/crbroker$i"; mkdir -p "$d"
  sed -e "s/15222/2${i}222/; s/15223/2${i}223/; s/15224/2${i}224/; s/15347/2${i}347/" \
      -e 's#"../cert.pem"#"../cert.pem"#' "$OUT/gen/crbroker/config.toml" >"$d/config.toml"
  # WORKERS=k: server.worker_threads of every node (default: one per core).
  [ -n "${WORKERS:-}" ] && sed -i "s/^\[server\]\$/[server]\nworker_threads = $WORKERS/" "$d/config.toml"
  ln -sf ../crbroker/accounts.txt "$d/accounts.txt"
  printf '\n[ops]\naddress = "127.0.0.1:2%s280"\n\n[cluster]\nservers = ["nats://127.0.0.1:14222"]\nnode = "n%s"\n' "$i" "$i" >>"$d/config.toml"
  RUST_LOG=warn "$BIN/crbroker" --config "$d/config.toml" >"$OUT/n$i.log" 2>&1 &
  echo $! >"$OUT/n$i.pid"
done
sleep 2
if [ "$MODE" = kill ]; then
  # N CPEs on n2. When n2 dies they log in again on n1 and n3 (as behind the load balancer), each
  # after a random wait of up to SPREAD ms (default 0: all at once), backing off when refused.
  # From the kill on, an ACS on n3 sends connection requests to each of them until every one has
  # answered `result` again (crbroker-bench probe, PROBE_RATE requests per second).
  SPREAD=${SPREAD:-0}
  PROBE_RATE=${PROBE_RATE:-4000}
  "$BIN/crbroker-bench" run -n "$N" --c2s 127.0.0.1:22222 --component-addr 127.0.0.1:22347 \
      --reconnect-to 127.0.0.1:21222 --reconnect-to 127.0.0.1:23222 \
      --reconnect-spread-ms "$SPREAD" --rate 0 --in-flight 0 --settle-secs 120 \
      >"$OUT/kill.txt" 2>&1 &
  until grep -q "online in" "$OUT/kill.txt"; do sleep 0.5; done
  grep "online in" "$OUT/kill.txt"
  sleep 2
  killed=$(date +%s%3N); kill -9 "$(cat "$OUT/n2.pid")"
  "$BIN/crbroker-bench" probe --component-addr 127.0.0.1:23347 -n "$N" --rate "$PROBE_RATE" \
      >"$OUT/probe.txt" 2>"$OUT/probe-progress.txt" || true
  cat "$OUT/probe.txt"
  until grep -q "lost sessions logged in again" "$OUT/kill.txt"; do sleep 0.2; done
  back=$(grep "lost sessions logged in again" "$OUT/kill.txt" | awk '{print $NF}')
  answered=$(grep "CPEs answered a request" "$OUT/probe.txt" | awk '{print $NF}')
  echo "kill -9 of n2 with $N CPEs (reconnect spread $SPREAD ms):"
  echo "  all logged in again on n1/n3 after $((back - killed)) ms"
  [ -n "$answered" ] && echo "  all answered connection requests again after $((answered - killed)) ms"
  for p in $(cat "$OUT/n1.pid" "$OUT/n3.pid" "$OUT/nats.pid"); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit 0
fi
pids() { cat "$OUT/n1.pid" "$OUT/n2.pid" "$OUT/n3.pid" "$OUT/nats.pid"; }
nats_rss() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$OUT/nats.pid")/status"; }
echo "nats-server RSS before logins: $(nats_rss) KiB"
# Nodes 2 and 3: N CPEs each (accounts after node 1's), held online while node 1 is measured.
HOLD=${HOLD:-300}
# TRANSPORT=direct: CPEs use the direct-TLS listeners (XEP-0368, port 2x223) instead of STARTTLS.
if [ "${TRANSPORT:-starttls}" = direct ]; then PORT=223; TLS=--direct-tls; else PORT=222; TLS=; fi
# TOOL_THREADS=k: worker threads of each tool process (default: one per core).
[ -n "${TOOL_THREADS:-}" ] && TLS="$TLS --threads $TOOL_THREADS"
start=$(date +%s.%N)
for i in 2 3; do
  "$BIN/crbroker-bench" run -n "$N" --first-account $(((i - 1) * N)) --c2s "127.0.0.1:2${i}$PORT" $TLS \
      --component-addr "127.0.0.1:2${i}347" --rate 0 --in-flight 0 --settle-secs "$HOLD" \
      --json-out "$OUT/hold$i.json" >"$OUT/hold$i.txt" 2>&1 &
  echo $! >"$OUT/hold$i.pid"
done
# Node 1: N CPEs, the ACS on node 1 (local requests), all nodes' and NATS's CPU counted.
cpu_pids=""; for p in $(cat "$OUT/n2.pid" "$OUT/n3.pid" "$OUT/nats.pid"); do cpu_pids="$cpu_pids --cpu-pid $p"; done
"$BIN/crbroker-bench" run -n "$N" --c2s "127.0.0.1:21$PORT" $TLS --component-addr 127.0.0.1:21347 \
    --broker-pid "$(cat "$OUT/n1.pid")" $cpu_pids --rate "$RATE" --open-secs 10 --in-flight 64 \
    --closed-secs 10 --label local --json-out "$OUT/local.json" | tee "$OUT/local.txt"
echo "nats-server RSS with 3 x $N CPEs online: $(nats_rss) KiB"
curl -s http://127.0.0.1:18222/varz | grep -E '"(mem|subscriptions|connections)"' || true
# Node 1 again, the ACS on node 2: every request crosses nodes (requester n2, holder n1).
"$BIN/crbroker-bench" run -n "$N" --c2s "127.0.0.1:21$PORT" $TLS --component-addr 127.0.0.1:22347 \
    --broker-pid "$(cat "$OUT/n1.pid")" $cpu_pids --rate "$RATE" --open-secs 10 --in-flight 64 \
    --closed-secs 10 --label cross-node --json-out "$OUT/cross.json" | tee "$OUT/cross.txt"
"$BIN/crbroker-bench" table "$OUT/local.json" "$OUT/cross.json"
echo "logins (all three tool processes started at $start):"; grep -h "online in" "$OUT"/hold*.txt "$OUT"/local.txt | head -4
for p in $(pids) $(cat "$OUT/hold2.pid" "$OUT/hold3.pid"); do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
