#!/usr/bin/env bash
# bench/intake.sh — Ferry's webhook intake (signed webhook → durable enqueue → 202) against a bare
# axum "hello" server, same machine, same run, same wrk settings.
#
#   bench/intake.sh              run, print the markdown section on stdout (progress on stderr)
#   bench/intake.sh --record     same, then replace the "## Intake" section of BENCHMARKS.md
#   bench/intake.sh --keep-tmp   keep the temp dir (config, secrets, queue.db, logs, pools)
#   bench/intake.sh --quiet-log  also measure ferry's ACR route with FERRY_LOG=warn (no log line per
#                                request), on a second, fresh ferry
#
# Environment:
#   FERRY_BIN, BARE_BIN   use these binaries instead of building them
#   FERRY_REV             what FERRY_BIN was built from (recorded in the report)
#   DURATION=10           seconds per measured wrk run (at most 15)
#   WARMUP=2              seconds of warm-up before each measured run (at most 15)
#   THREADS=2             wrk threads
#   CONNS="64 16"         connection counts, one group of rows each
#   POOL_FACTOR=2         generic/acr pool = max(warm-up rate × POOL_FACTOR, 0.6 × bare rate)
#                         × DURATION requests
#   BENCH_TMPDIR=/var/tmp where the temp dir (and the queue's data_dir) goes; must not be tmpfs
#   QUIET_WAIT=0          wait up to this many seconds for the CPUs to be ≥ 90% idle first
#   OTHER_MAX=0.35        a row is invalid when processes other than server and wrk used more
#                         CPU cores than this during it (kernel I/O threads count as other)
#
# Exit status: 0 when every run is valid and every target is met, 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
LIB="$HERE/intake_gen.py"
LUA="$HERE/intake/pool.lua"
OUT="$HERE/out/intake-last"

INVOCATION="bench/intake.sh${*:+ $*}"
RECORD=0
KEEP=0
QUIET_LOG=0
for arg in "$@"; do
    case "$arg" in
        --record) RECORD=1 ;;
        --keep-tmp) KEEP=1 ;;
        --quiet-log) QUIET_LOG=1 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-"64 16"}
POOL_FACTOR=${POOL_FACTOR:-2}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
QUIET_WAIT=${QUIET_WAIT:-0}
OTHER_MAX=${OTHER_MAX:-0.35}

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

for n in DURATION WARMUP; do
    v=${!n}
    [[ "$v" =~ ^[0-9]+$ ]] && ((v >= 1 && v <= 15)) || die "$n must be 1..15 seconds (got $v)"
done
for c in $CONNS; do
    [[ "$c" =~ ^[0-9]+$ ]] && ((c >= THREADS)) || die "CONNS entries must be integers ≥ THREADS ($THREADS)"
done

# ------------------------------------------------------------------ tools

SUDO=()
[[ $(id -u) == 0 ]] || SUDO=(sudo)
if ! command -v wrk >/dev/null; then
    log "installing wrk (apt-get)"
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
fi
command -v python3 >/dev/null || die "python3 is needed"

BUILT_HERE=0
if [[ -z "${FERRY_BIN:-}" || -z "${BARE_BIN:-}" ]]; then
    if [[ -z "${FERRY_BIN:-}" ]]; then
        BUILT_HERE=1
        log "building target/release/ferry"
        (cd "$ROOT" && cargo build --release --bin ferry >&2)
    fi
    if [[ -z "${BARE_BIN:-}" ]]; then
        log "building target/release/examples/bare_axum"
        (cd "$ROOT" && cargo build --release -p ferry-core --example bare_axum >&2)
    fi
fi
FERRY_BIN=${FERRY_BIN:-$ROOT/target/release/ferry}
BARE_BIN=${BARE_BIN:-$ROOT/target/release/examples/bare_axum}
[[ -x "$FERRY_BIN" ]] || die "no ferry binary at $FERRY_BIN"
[[ -x "$BARE_BIN" ]] || die "no bare_axum binary at $BARE_BIN"

if ((QUIET_WAIT > 0)); then
    log "waiting up to ${QUIET_WAIT}s for the CPUs to be idle"
fi
read -r idle steal < <(python3 "$LIB" wait-quiet "$QUIET_WAIT")
if ((idle < 90)); then
    log "WARNING: the CPUs were only ${idle}% idle before the run: other work skews every number on 2 cores"
fi
if ((steal >= 5)); then
    log "WARNING: the hypervisor took ${steal}% of the CPUs when asked for them: a noisy neighbour skews every number"
fi
busy=$(pgrep -x -d, 'cargo|rustc|cc1|cc1plus|ld|wrk|skopeo|docker-registry' || true)
if [[ -n "$busy" ]]; then
    log "WARNING: other CPU-heavy processes are running (pids $busy)"
fi

# ------------------------------------------------------------------ temp dir, config

mkdir -p "$BENCH_TMPDIR"
TMP=$(mktemp -d "$BENCH_TMPDIR/ferry-intake.XXXXXX")
fstype=$(stat -f -c %T "$TMP")
if [[ "$fstype" == tmpfs || "$fstype" == ramfs ]] && [[ "${ALLOW_TMPFS:-0}" != 1 ]]; then
    rm -rf "$TMP"
    die "$BENCH_TMPDIR is $fstype: fsync would not reach a disk; set BENCH_TMPDIR to a disk path"
fi

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if ((KEEP)); then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$OUT"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

python3 -c 'import secrets; print(secrets.token_hex(32))' >"$TMP/generic.secret"
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$TMP/acr.secret"
chmod 600 "$TMP"/*.secret

write_config() { # DATA_DIR CONFIG
    cat >"$2" <<EOF
# Written by bench/intake.sh. No registry runs: intake never contacts one.
[server]
data_dir = "$1"

[registries."127.0.0.1:5001"]
plain_http = true
[registries."127.0.0.1:5002"]
plain_http = true

[sources.generic]
secret_file = "$TMP/generic.secret"

[sources.acr]
secret_file = "$TMP/acr.secret"

[[pipelines]]
name = "shop-api"
source = "127.0.0.1:5001/shop/api"

  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"
EOF
}

start_ferry() { # NAME -> sets FERRY_URL FERRY_DB FERRY_LOG_FILE FERRY_PID; extra env via FERRY_ENV
    local name=$1 port
    write_config "$TMP/$name-data" "$TMP/$name.toml"
    port=$(python3 "$LIB" freeport)
    FERRY_LOG_FILE="$TMP/$name.log"
    env ${FERRY_ENV:-} "$FERRY_BIN" serve --config "$TMP/$name.toml" --listen "127.0.0.1:$port" \
        "${SERVE_FLAGS[@]}" 2>"$FERRY_LOG_FILE" >/dev/null &
    FERRY_PID=$!
    PIDS+=("$FERRY_PID")
    FERRY_URL="http://127.0.0.1:$port"
    FERRY_DB="$TMP/$name-data/queue.db"
    python3 "$LIB" wait-http "$FERRY_URL/healthz" 20 || {
        cat "$FERRY_LOG_FILE" >&2
        die "ferry serve did not come up"
    }
    log "ferry serve ($name) on $FERRY_URL, queue $FERRY_DB, pid $FERRY_PID${FERRY_ENV:+, $FERRY_ENV}"
}

# Intake only: a `ferry serve` that also runs the promotion worker would pick the jobs up and
# fail against registries that do not run. Binaries older than --no-worker had no worker.
SERVE_FLAGS=()
if "$FERRY_BIN" serve --help 2>/dev/null | grep -q -- '--no-worker'; then
    SERVE_FLAGS=(--no-worker)
fi

FERRY_ENV="" start_ferry ferry
MAIN_FERRY_PID=$FERRY_PID MAIN_URL=$FERRY_URL MAIN_DB=$FERRY_DB MAIN_LOG=$FERRY_LOG_FILE
DATA_DIR=$(dirname "$MAIN_DB")

bare_port=$(python3 "$LIB" freeport)
"$BARE_BIN" "127.0.0.1:$bare_port" 2>"$TMP/bare.log" >/dev/null &
BARE_PID=$!
PIDS+=("$BARE_PID")
BARE_URL="http://127.0.0.1:$bare_port"
python3 "$LIB" wait-port "$bare_port" 20 || die "bare_axum did not come up"
log "bare axum on $BARE_URL"

read -r fsync_p50 fsync_p99 < <(python3 "$LIB" fsync "$DATA_DIR" 200)
log "fsync after a 16 KiB append in data_dir: median $fsync_p50 ms, p99 $fsync_p99 ms"
MACHINE=$(python3 "$LIB" machine "$DATA_DIR")

# ------------------------------------------------------------------ runs

# wrk_run URL POOL MODE IDS SECONDS CONNS OUTFILE
wrk_run() {
    wrk -t"$THREADS" -c"$6" -d"$5"s --latency --timeout 5s -s "$LUA" "$1" -- "$2" "$3" "$4" >"$7" 2>&1 || {
        cat "$7" >&2
        die "wrk failed"
    }
}

children_cpu() { # CHILD_CPU = CPU seconds (user+sys) of this shell's finished children so far
    times >"$TMP/times" # the builtin, in this shell: in a pipe or $(…) it would see a subshell's
    CHILD_CPU=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] } printf "%.2f", t }' "$TMP/times")
}

rps_of() { # WRK_OUT -> requests/s from INTAKE_RESULT
    python3 - "$1" <<'EOF'
import json, re, sys
m = re.search(r"^INTAKE_RESULT (\{.*\})$", open(sys.argv[1]).read(), re.M)
r = json.loads(m.group(1))
print(int(r["requests"] / (r["duration_us"] / 1e6)))
EOF
}

bare_row() { # CONNS
    local c=$1 tag="bare-c$1"
    log "[$tag] bare axum POST /hooks/generic, $THREADS threads, $c connections"
    # A small pool, cycled: bare_axum checks nothing, but the client does the same work per
    # request as in the Ferry rows (same Lua, same request sizes).
    python3 "$LIB" pool --kind generic --secret-file "$TMP/generic.secret" --out "$TMP/$tag.pool" \
        --threads "$THREADS" --count $((2000 * THREADS)) --tag "$tag"
    wrk_run "$BARE_URL/hooks/generic" "$TMP/$tag.pool" wrap - "$WARMUP" "$c" "$OUT/$tag.warmup.txt"
    cpu0=$(python3 "$LIB" cpu "$BARE_PID")
    children_cpu
    w0=$CHILD_CPU
    wrk_run "$BARE_URL/hooks/generic" "$TMP/$tag.pool" wrap - "$DURATION" "$c" "$OUT/$tag.txt"
    children_cpu
    w1=$CHILD_CPU
    cpu1=$(python3 "$LIB" cpu "$BARE_PID")
    python3 "$LIB" check --label "$tag" --target bare --route "/hooks/generic" --conns "$c" \
        --threads "$THREADS" --wrk-out "$OUT/$tag.txt" --cpu-before "$cpu0" --cpu-after "$cpu1" \
        --client-cpu "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')" \
        --max-other-cores "$OTHER_MAX" >>"$RESULTS"
    rm -f "$TMP/$tag.pool".*
}

ferry_row() { # KIND CONNS URL DB LOG PID LABEL_SUFFIX [ROUTE_NOTE]
    local kind=$1 c=$2 url=$3 db=$4 logf=$5 pid=$6 tag="ferry-$1-c$2$7" note=${8:-}
    local bare_rps warm_n warm_rps n before before_seq log_before cpu0 cpu1 sigs w0 w1
    log "[$tag] ferry serve POST /hooks/$kind, $THREADS threads, $c connections"
    bare_rps=$(rps_of "$OUT/bare-c$c.txt")
    warm_n=$((bare_rps * WARMUP * 12 / 10 + 1000))
    python3 "$LIB" pool --kind "$kind" --secret-file "$TMP/$kind.secret" --out "$TMP/$tag.warm" \
        --threads "$THREADS" --count "$warm_n" --tag "$tag-warm"
    wrk_run "$url/hooks/$kind" "$TMP/$tag.warm" once - "$WARMUP" "$c" "$OUT/$tag.warmup.txt"
    rm -f "$TMP/$tag.warm".*
    warm_rps=$(rps_of "$OUT/$tag.warmup.txt")
    # Enough for POOL_FACTOR × the warm-up's rate, and never less than 0.6 × the bare peer's
    # rate: a warm-up slowed by a passing disturbance must not leave the measured run short.
    local rate=$((warm_rps * POOL_FACTOR))
    ((rate >= bare_rps * 6 / 10)) || rate=$((bare_rps * 6 / 10))
    n=$((rate * DURATION + 5000))
    before=$(python3 "$LIB" settle "$db")
    before_seq=$(python3 "$LIB" max-seq "$db")
    log_before=$(grep -c "promotion queued" "$logf" || true)
    sigs=()
    if [[ $kind == generic ]]; then
        sigs=(--sigs-before "$(python3 "$LIB" count-sender "$db" generic)")
    fi
    # Signed now: timestamps stay well inside Ferry's ±5 min window for the whole run.
    python3 "$LIB" pool --kind "$kind" --secret-file "$TMP/$kind.secret" --out "$TMP/$tag.pool" \
        --threads "$THREADS" --count "$n" --tag "$tag"
    cpu0=$(python3 "$LIB" cpu "$pid")
    children_cpu
    w0=$CHILD_CPU
    wrk_run "$url/hooks/$kind" "$TMP/$tag.pool" once "$OUT/$tag.ids" "$DURATION" "$c" "$OUT/$tag.txt"
    children_cpu
    w1=$CHILD_CPU
    cpu1=$(python3 "$LIB" cpu "$pid")
    rm -f "$TMP/$tag.pool".*
    python3 "$LIB" settle "$db" >/dev/null
    python3 "$LIB" check --label "$tag" --target ferry --route "/hooks/$kind$note" --conns "$c" \
        --threads "$THREADS" --wrk-out "$OUT/$tag.txt" --db "$db" --before "$before" \
        --before-seq "$before_seq" --ids "$OUT/$tag.ids" --log "$logf" --log-before "$log_before" \
        --cpu-before "$cpu0" --cpu-after "$cpu1" "${sigs[@]}" \
        --client-cpu "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')" \
        --max-other-cores "$OTHER_MAX" >>"$RESULTS"
}

for c in $CONNS; do
    bare_row "$c"
    ferry_row generic "$c" "$MAIN_URL" "$MAIN_DB" "$MAIN_LOG" "$MAIN_FERRY_PID" ""
    ferry_row acr "$c" "$MAIN_URL" "$MAIN_DB" "$MAIN_LOG" "$MAIN_FERRY_PID" ""
done

if ((QUIET_LOG)); then
    FERRY_ENV="FERRY_LOG=warn" start_ferry ferry-quiet
    for c in $CONNS; do
        ferry_row acr "$c" "$FERRY_URL" "$FERRY_DB" "$FERRY_LOG_FILE" "$FERRY_PID" "-log-warn" " (FERRY_LOG=warn)"
    done
    kill "$FERRY_PID" 2>/dev/null || true
    wait "$FERRY_PID" 2>/dev/null || true
fi

# Crash check: SIGKILL the main ferry, reopen the queue file, count again.
total_before=$(python3 "$LIB" settle "$MAIN_DB")
kill -9 "$MAIN_FERRY_PID"
wait "$MAIN_FERRY_PID" 2>/dev/null || true
total_after=$(python3 -c '
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])  # read-write: recovers the WAL the killed process left
print(c.execute("SELECT count(*) FROM jobs").fetchone()[0])' "$MAIN_DB")
log "after SIGKILL of ferry: $total_after jobs in queue.db (before the kill: $total_before)"
crash_note="After all runs ferry was killed with SIGKILL and queue.db reopened: $total_after jobs (before the kill: $total_before)."
[[ "$total_after" == "$total_before" ]] || crash_note="$crash_note **MISMATCH**"

# ------------------------------------------------------------------ report

set +e
TABLE=$(python3 "$LIB" summarize "$RESULTS")
verdict=$?
set -e

ferry_version=$("$FERRY_BIN" --version 2>/dev/null || echo ferry)
if [[ -n "${FERRY_REV:-}" ]]; then
    built_from="built from $FERRY_REV"
elif ((BUILT_HERE)); then
    commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')
    dirty=$(cd "$ROOT" && git status --porcelain -- src shared Cargo.toml Cargo.lock 2>/dev/null | head -1)
    [[ -z "$dirty" ]] || commit="$commit + uncommitted changes"
    built_from="built from this tree ($commit)"
else
    built_from="FERRY_BIN=$FERRY_BIN"
fi

SECTION="$OUT/section.md"
{
    echo "## Intake"
    echo
    echo "\`bench/intake.sh\`: signed webhook → durable enqueue → 202, \`ferry serve\` against a bare axum"
    echo "\"hello\" (\`shared/examples/bare_axum.rs\`: \`POST /hooks/generic\` → 202 + small JSON, no work),"
    echo "same machine, same run, same wrk settings. Target (DESIGN.md): Ferry ≥ 0.3× bare req/s with"
    echo "every 202 durable, p99 < 10 ms."
    echo
    settings=""
    for v in DURATION WARMUP THREADS CONNS POOL_FACTOR QUIET_WAIT OTHER_MAX; do
        settings+="$v=\"${!v}\" "
    done
    echo "Recorded with \`$settings$INVOCATION\`."
    echo
    echo "$MACHINE"
    echo "- CPU idle just before the run: ${idle}%; hypervisor steal with both CPUs busy: ${steal}% (other processes and neighbours skew 2-core numbers)"
    echo "- fsync after a 16 KiB append in the queue's data_dir (≈ one small WAL commit): median $fsync_p50 ms, p99 $fsync_p99 ms"
    echo "- $ferry_version ($built_from), release profile; $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    echo "- wrk -t$THREADS, ${DURATION} s per row after a ${WARMUP} s warm-up, --timeout 5s; client, servers and"
    echo "  the queue's writer thread share the same 2 cores (nothing pinned)"
    echo
    echo "$TABLE"
    echo
    echo "How it is measured:"
    echo
    echo "- Every Ferry request is unique and valid: a fresh digest each (so dedup never merges two),"
    echo "  generic ones HMAC-signed just before the run (\`X-Ferry-Timestamp\` = now), ACR ones with"
    echo "  \`Authorization: Bearer <secret>\` and a unique delivery id; each wrk thread replays its own"
    echo "  pre-generated slice (\`bench/intake_gen.py pool\`, \`bench/intake/pool.lua\`), never the same"
    echo "  request twice. One pipeline matches, so each request is one job."
    echo "- The Lua \`response\` hook counts every status; any non-202, socket error, duplicate or"
    echo "  exhausted pool makes the row invalid. It also records the job id of every 202; after the run"
    echo "  each id must be a row of \`queue.db\` (\"202 ids missing\" = 0), and the queue must have"
    echo "  grown by the number of 202s plus at most one request per connection still in flight when wrk"
    echo "  stopped (Ferry committed them, wrk never read the answer)."
    echo "- Ferry runs with its defaults (\`ferry serve ${SERVE_FLAGS[*]:-}\`: intake only, no worker takes the jobs):"
    echo "  \`info\` logging to stderr (redirected to a file on the same disk), queue in \`data_dir\` with"
    echo "  WAL and group commit; every 202 waits for an fdatasync(2) of the WAL that covers its commit"
    echo "  (the queue's sync thread; SQLite itself commits with \`synchronous=NORMAL\`)."
    echo "- p50/p99 are wrk's (closed loop: each connection waits for its answer before sending again)."
    echo "- $crash_note"
} >"$SECTION"

cat "$SECTION"
if ((RECORD)); then
    python3 "$LIB" record "$ROOT/BENCHMARKS.md" "$SECTION"
    log "recorded the \"## Intake\" section of $ROOT/BENCHMARKS.md"
fi
log "raw results: $OUT"
exit "$verdict"
