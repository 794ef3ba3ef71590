#!/usr/bin/env bash
# The PostgreSQL account store against the accounts file, in one run on this machine:
#   1. 19,000 CPE logins with the accounts file, then the same 19,000 with the accounts in a
#      PostgreSQL table (cold cache: every login is one query), side by side (time until all
#      online, broker CPU per login, login latency) plus the database's CPU during the logins;
#   2. the table grown to 1,000,000 accounts (`crbroker db import`, timed), the broker restarted,
#      the same 19,000 logins again: login latency p99 with a million rows.
#
#   bench/postgres.sh [-n N] [--rows ROWS] [--out DIR]     defaults: 19000, 1000000, /tmp/crbroker-pg-bench
#
# PostgreSQL is a throwaway cluster of this script (initdb into DIR/pg, 127.0.0.1:25432; run as
# the postgres user when root), stopped at the end. The broker and the tool use their own ports
# (25222, 25223, 25347; ops listener on a free port) so other runs on the machine do not collide.
# Database CPU = utime + stime of the postmaster and its backends (/proc/PID/stat) over the
# login phase, read before the broker stops (its pooled backends live as long as it does).
set -uo pipefail

N=19000
ROWS=1000000
OUT=/tmp/crbroker-pg-bench
C2S_PORT=25222
DIRECT_TLS_PORT=25223
COMPONENT_PORT=25347
PG_PORT=25432
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "postgres.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/target/release/crbroker-bench
BROKER=$ROOT/target/release/crbroker
say() { echo "== $*"; }

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PGBIN=
for dir in /usr/lib/postgresql/*/bin /usr/local/bin /usr/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && PGBIN=$dir && break
done
if [ -z "$PGBIN" ]; then
    echo "postgres.sh: PostgreSQL server binaries not found: apt-get install postgresql" >&2
    exit 2
fi
as_postgres() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --clear-groups "$@"; else "$@"; fi; }

PG_PID=
POSTMASTER=
BROKER_PID=
cleanup() {
    [ -n "$BROKER_PID" ] && kill -TERM "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    # Fast shutdown of the postmaster (PG_PID is only the shell that started it).
    [ -n "$POSTMASTER" ] && kill -INT "$POSTMASTER" 2>/dev/null
    [ -n "$PG_PID" ] && wait "$PG_PID" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building (release)"
(cd "$ROOT" && cargo build --release -p crbroker -p crbroker-bench) || exit 1

rm -rf "$OUT"
mkdir -p "$OUT/pg"
[ "$(id -u)" = 0 ] && chown postgres "$OUT/pg"
say "PostgreSQL cluster in $OUT/pg, port $PG_PORT ($PGBIN)"
as_postgres "$PGBIN/initdb" -D "$OUT/pg/data" -A trust -U crbroker >"$OUT/initdb.log" 2>&1 || {
    cat "$OUT/initdb.log"; exit 1; }
as_postgres "$PGBIN/postgres" -D "$OUT/pg/data" -c listen_addresses=127.0.0.1 -p $PG_PORT \
    -k "$OUT/pg" -c max_connections=100 >"$OUT/postgres.log" 2>&1 &
PG_PID=$!
URL="postgresql://crbroker@127.0.0.1:$PG_PORT/postgres"
for ((i = 0; i < 100; i++)); do
    psql "$URL" -Atc "select 1" >/dev/null 2>&1 && break
    sleep 0.1
done
# The postmaster itself ($! is the shell that started it).
POSTMASTER=$(head -n 1 "$OUT/pg/data/postmaster.pid")

say "configs and $N accounts under $OUT/cfg"
"$BENCH" gen-config --out "$OUT/cfg" -n "$N" \
    --c2s-port $C2S_PORT --direct-tls-port $DIRECT_TLS_PORT --component-port $COMPONENT_PORT >/dev/null || exit 1
FILE_CONF=$OUT/cfg/crbroker/config.toml
PG_CONF=$OUT/cfg/crbroker/config-pg.toml
printf '\n[ops]\naddress = "127.0.0.1:0"\n' >>"$FILE_CONF"
grep -v '^file = "accounts.txt"' "$FILE_CONF" >"$PG_CONF"
printf '\n[accounts.postgres]\nurl = "%s"\n' "$URL" >>"$PG_CONF"

"$BROKER" --config "$PG_CONF" db migrate || exit 1
"$BROKER" --config "$PG_CONF" db import "$OUT/cfg/crbroker/accounts.txt" || exit 1

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
# Clock ticks of the postmaster and its children.
db_ticks() {
    local total=0 pid stat
    for pid in $POSTMASTER $(pgrep -P "$POSTMASTER"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        set -- $stat
        total=$((total + ${12} + ${13}))
    done
    echo $total
}

# measure LABEL CONFIG
measure() {
    local label=$1 config=$2 i before after
    RUST_LOG=warn "$BROKER" --config "$config" >"$OUT/$label.log" 2>&1 &
    BROKER_PID=$!
    for ((i = 0; i < 300; i++)); do
        listening $C2S_PORT && listening $COMPONENT_PORT && break
        sleep 0.1
    done
    before=$(db_ticks)
    "$BENCH" run --label "$label" -n "$N" --c2s 127.0.0.1:$C2S_PORT \
        --component-addr 127.0.0.1:$COMPONENT_PORT --broker-pid "$BROKER_PID" \
        --rate 0 --in-flight 0 --settle-secs 1 --json-out "$OUT/$label.json" >"$OUT/$label.txt"
    after=$(db_ticks)
    kill -TERM "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null; BROKER_PID=
    local hz; hz=$(getconf CLK_TCK)
    echo "$label: database CPU during the logins $(awk -v t=$((after - before)) -v hz="$hz" -v n="$N" \
        'BEGIN { printf "%.2f s (%.3f ms per login)", t / hz, 1000 * t / hz / n }')" | tee -a "$OUT/db-cpu.txt"
    grep -E "login (rate|latency)|CPU broker|online" "$OUT/$label.txt" | sed 's/^/   /'
    sleep 2
}

say "$N logins: accounts file, then PostgreSQL ($N rows)"
measure file "$FILE_CONF"
measure postgres "$PG_CONF"

say "growing the table to $ROWS rows"
awk -v n="$ROWS" 'BEGIN { for (i = 0; i < n; i++) printf "cpe-%06d plain:pw\n", i }' >"$OUT/million.txt"
"$BROKER" --config "$PG_CONF" db import "$OUT/million.txt" || exit 1
psql "$URL" -Atc "select 'rows in crbroker_accounts: ' || count(*) from crbroker_accounts"
say "$N logins with $ROWS rows in the table"
measure postgres-${ROWS} "$PG_CONF"

say "side by side"
"$BENCH" table "$OUT/file.json" "$OUT/postgres.json" "$OUT/postgres-${ROWS}.json"
cat "$OUT/db-cpu.txt"
