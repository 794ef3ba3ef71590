#!/usr/bin/env bash
# Run the same crbroker-bench measurements against crbroker, Prosody and ejabberd on this
# machine, one server at a time, and print one side-by-side table with ratios (peer / crbroker).
#
#   bench/compare.sh            full run: 19,000 sessions, 2,000 CR/s for 10 s, 64 in flight for 10 s
#   bench/compare.sh --quick    smoke check: 2,000 sessions, 3 s per CR phase
#
# Options (after --quick, which only changes defaults):
#   -n N                 sessions (default 19000; --quick 2000)
#   --rate R             open-loop connection requests per second (default 2000)
#   --open-secs S        open-loop seconds (default 10; --quick 3)
#   --in-flight K        closed-loop requests in flight (default 64)
#   --closed-secs S      closed-loop seconds (default 10; --quick 3)
#   --concurrency C      logins in progress at once (default 100)
#   --servers "LIST"     which servers, in order (default "crbroker prosody ejabberd")
#   --out DIR            where configs, logs and JSON reports go (default /tmp/crbroker-compare)
#   --build LABEL=PATH   measure this crbroker binary as a column LABEL instead of the servers
#                        (repeatable; e.g. before/after a change, in one run: --build
#                        before=/tmp/crbroker-old --build after=target/release/crbroker);
#                        list a build twice under two labels to see the run-to-run noise
#   --no-install         never run apt-get; skip a peer that is not installed
#   --priority           give this script's processes (servers, tool) scheduling priority over
#                        other sessions' work for the run: sets this session's autogroup nice to
#                        -10 (root; with autogroup scheduling a background job's own `nice` does
#                        not yield to other sessions), and back to what it was at the end
#
# Prosody and ejabberd come from Debian packages (installed here if missing). Every server runs
# as a process of this script (root), on 127.0.0.1 ports only, and is stopped after its
# measurement. Traffic goes to loopback only; every phase is bounded; the script ends by itself.
set -uo pipefail

N=19000
RATE=2000
OPEN_SECS=10
IN_FLIGHT=64
CLOSED_SECS=10
CONCURRENCY=100
SERVERS="crbroker prosody ejabberd"
OUT=/tmp/crbroker-compare
INSTALL=1
PRIORITY=0
BUILDS=()
C2S_PORT=15222
DIRECT_TLS_PORT=15223
COMPONENT_PORT=15347

if [ "${1:-}" = "--quick" ]; then
    N=2000
    OPEN_SECS=3
    CLOSED_SECS=3
    shift
fi
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --open-secs) OPEN_SECS=$2; shift 2 ;;
        --in-flight) IN_FLIGHT=$2; shift 2 ;;
        --closed-secs) CLOSED_SECS=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --build) BUILDS+=("$2"); shift 2 ;;
        --priority) PRIORITY=1; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ ${#BUILDS[@]} -gt 0 ]; then
    SERVERS=""
    for build in "${BUILDS[@]}"; do
        case $build in
            *=*) SERVERS="$SERVERS crbroker=$build" ;;
            *) echo "compare.sh: --build wants LABEL=PATH, got $build" >&2; exit 2 ;;
        esac
    done
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/target/release/crbroker-bench
BROKER=$ROOT/target/release/crbroker
started_at=$(date +%s)

say() { echo "== $*"; }

# Up to 20,000 open files for this script and everything it starts (each side holds one
# socket per session).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((N + 100)) ]; then
    echo "compare.sh: open-files limit $(ulimit -n) is too low for $N sessions" >&2
    exit 2
fi

# Whatever happens (error, Ctrl-C), the server being measured is stopped and the priority
# restored.
PID=
AUTOGROUP_NICE=
cleanup() {
    [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null && stop_server "$PID"
    [ -n "$AUTOGROUP_NICE" ] && echo "$AUTOGROUP_NICE" >/proc/self/autogroup 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$PRIORITY" = 1 ]; then
    if [ -w /proc/self/autogroup ]; then
        AUTOGROUP_NICE=$(sed -n 's/.* nice //p' /proc/self/autogroup)
        if echo -10 >/proc/self/autogroup 2>/dev/null; then
            say "priority: $(cat /proc/self/autogroup) (was nice $AUTOGROUP_NICE)"
        else
            echo "   --priority: cannot set the autogroup nice; running without"
            AUTOGROUP_NICE=
        fi
    else
        echo "   --priority: no autogroup scheduling here; running without"
    fi
fi

say "building (release)"
(cd "$ROOT" && cargo build --release -p crbroker -p crbroker-bench) || exit 1

# ---- Peer servers from Debian packages -------------------------------------------------------
apt_updated=0
have_prosody() { command -v prosody >/dev/null 2>&1; }
# Debian's ejabberd is an OTP application under /usr/lib/<triplet>/ejabberd-<version>.
ejabberd_app_dir() { ls -d /usr/lib/*/ejabberd-[0-9]* 2>/dev/null | head -n 1; }
have_ejabberd() { [ -n "$(ejabberd_app_dir)" ] && command -v erl >/dev/null 2>&1; }
ejabberd_libs() { dirname "$(ejabberd_app_dir)"; }

install_peer() {
    local pkg=$1
    if [ "$INSTALL" = 0 ]; then
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "   not root: cannot apt-get install $pkg"
        return 1
    fi
    if [ $apt_updated = 0 ]; then
        say "apt-get update"
        apt-get update -q >"$OUT/apt-update.log" 2>&1 || echo "   apt-get update failed (see $OUT/apt-update.log)"
        apt_updated=1
    fi
    apt-cache policy "$pkg" | sed -n '1,3p'
    # Do not let the package start its system service (it would take the default ports and
    # run with the Debian configuration): a policy-rc.d that refuses, for the install only.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    say "apt-get install -y $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >"$OUT/apt-install-$pkg.log" 2>&1
    local rc=$?
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ $rc != 0 ]; then
        echo "   apt-get install $pkg failed (exit $rc); last lines of $OUT/apt-install-$pkg.log:"
        tail -n 5 "$OUT/apt-install-$pkg.log" | sed 's/^/     /'
        return 1
    fi
    return 0
}

mkdir -p "$OUT"
rm -f "$OUT"/*.json
for server in $SERVERS; do
    case $server in
        prosody) have_prosody || install_peer prosody || echo "   prosody unavailable: its column is skipped" ;;
        ejabberd) have_ejabberd || install_peer ejabberd || echo "   ejabberd unavailable: its column is skipped" ;;
    esac
done

say "generating configs and $N accounts under $OUT/cfg"
rm -rf "$OUT/cfg"
"$BENCH" gen-config --out "$OUT/cfg" -n "$N" \
    --c2s-port $C2S_PORT --direct-tls-port $DIRECT_TLS_PORT --component-port $COMPONENT_PORT || exit 1
CFG=$OUT/cfg

# ---- Start / wait / stop ---------------------------------------------------------------------
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

ports_free() {
    local p
    for p in $C2S_PORT $DIRECT_TLS_PORT $COMPONENT_PORT; do
        if listening "$p"; then
            echo "   port $p is already in use:"
            ss -Hltnp "sport = :$p" | sed 's/^/     /'
            return 1
        fi
    done
}

# wait_ready PID SECONDS [MARKER_FILE]
wait_ready() {
    local pid=$1 limit=$2 marker=${3:-} i
    for ((i = 0; i < limit * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "   the server exited during start-up"
            return 1
        fi
        if listening $C2S_PORT && listening $COMPONENT_PORT && { [ -z "$marker" ] || [ -e "$marker" ]; }; then
            return 0
        fi
        sleep 0.1
    done
    echo "   not ready after $limit s"
    return 1
}

stop_server() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "   still running 15 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

start_crbroker() {
    RUST_LOG=warn "$BROKER" --config "$CFG/crbroker/config.toml" >"$OUT/$server.log" 2>&1 &
    PID=$!
    wait_ready $PID 60
}

start_prosody() {
    have_prosody || { echo "   prosody is not installed"; return 1; }
    # `prosody` is a Lua script (#!/usr/bin/env lua5.x): $! is the server process itself.
    prosody --config "$CFG/prosody/prosody.cfg.lua" -F >"$OUT/prosody.log" 2>&1 &
    PID=$!
    wait_ready $PID 60
}

start_ejabberd() {
    have_ejabberd || { echo "   ejabberd is not installed"; return 1; }
    local dir=$CFG/ejabberd
    mkdir -p "$dir/db"
    rm -f "$dir/registered"
    # The Erlang VM directly (not ejabberdctl, which would switch to the ejabberd user and start
    # epmd on all interfaces): no distribution, Mnesia in $dir/db. After ejabberd has started,
    # register.erl registers the accounts through ejabberd_auth (internal auth, plain
    # passwords) in the same VM and writes $dir/registered.
    ERL_LIBS=$(ejabberd_libs) \
    EJABBERD_CONFIG_PATH=$dir/ejabberd.yml \
    EJABBERD_LOG_PATH=$dir/ejabberd.log \
    ERL_CRASH_DUMP=$dir/erl_crash.dump \
    ERL_MAX_PORTS=32000 \
        erl -noinput +P 250000 -mnesia dir "\"$dir/db\"" -s ejabberd -eval "$(cat "$dir/register.erl")" \
        >"$OUT/ejabberd.log" 2>&1 &
    PID=$!
    wait_ready $PID 180 "$dir/registered" || return 1
    echo "   $(cat "$dir/registered")"
}

RAN=()
DEFAULT_BROKER=$BROKER
for spec in $SERVERS; do
    # A plain server name, or crbroker=LABEL=PATH from --build.
    server=$spec
    start=start_$spec
    BROKER=$DEFAULT_BROKER
    case $spec in
        crbroker=*)
            rest=${spec#crbroker=}
            server=${rest%%=*}
            BROKER=${rest#*=}
            start=start_crbroker
            ;;
    esac
    say "$server"
    ports_free || { echo "   $server skipped"; continue; }
    PID=
    if ! "$start"; then
        echo "   $server did not start (log: $OUT/$server.log); its column is skipped"
        [ -n "$PID" ] && stop_server "$PID"
        PID=
        continue
    fi
    echo "   pid $PID; measuring"
    "$BENCH" run --label "$server" -n "$N" -c "$CONCURRENCY" \
        --c2s 127.0.0.1:$C2S_PORT --component-addr 127.0.0.1:$COMPONENT_PORT \
        --broker-pid "$PID" --rate "$RATE" --open-secs "$OPEN_SECS" \
        --in-flight "$IN_FLIGHT" --closed-secs "$CLOSED_SECS" \
        --json-out "$OUT/$server.json" >"$OUT/$server.txt" 2>"$OUT/$server.progress"
    rc=$?
    grep -v '^{' "$OUT/$server.txt"
    [ $rc != 0 ] && echo "   (crbroker-bench exited $rc for $server)"
    stop_server "$PID"
    PID=
    [ -s "$OUT/$server.json" ] && RAN+=("$OUT/$server.json")
    sleep 2
done

say "side by side ($N sessions; ratios are column / $(basename "${RAN[0]:-none}" .json))"
if [ ${#RAN[@]} -gt 0 ]; then
    "$BENCH" table "${RAN[@]}"
else
    echo "no server was measured"
fi
echo "configs, logs and reports: $OUT; took $(( $(date +%s) - started_at )) s"
