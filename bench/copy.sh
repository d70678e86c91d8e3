#!/usr/bin/env bash
# Copy benchmark: `ferry copy` vs `skopeo copy`, registry-to-registry over plain
# HTTP on 127.0.0.1. See bench/README.md for details.
#
# Usage: bench/copy.sh [--record] [--only ferry|skopeo] [--runs N] [--keep-tmp]
#
# Environment knobs (defaults in brackets):
#   RUNS [3]              timed runs per tool per scenario (alternating tools)
#   BIG_MIB [1024]        total layer size of the big image; BIG_LAYERS [8]
#   SMALL_MIB [100]       total layer size of the small image; SMALL_LAYERS [4]
#   IMAGES [big,small]    which images to benchmark
#   SCENARIOS [cold,warm,mount]
#   FERRY_BIN             use this ferry binary instead of `cargo build --release`
#   BENCH_TMPDIR [/tmp]   parent of the temp dir holding registry storage
#   RUN_TIMEOUT [900]     seconds before a single copy is killed
#   QUIET_WAIT [0]        before each timed run, wait up to this many seconds for
#                         running cargo/rustc processes (someone else's builds) to end
#   BENCH_NICE [0]        nice value for registries and copies (e.g. -10 as root,
#                         to shield the measurement from concurrent builds)
#   BENCHMARKS_MD [<repo>/BENCHMARKS.md]  file updated by --record
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
OUT="$HERE/out"
LIB=(python3 "$HERE/benchlib.py")

RUNS=${RUNS:-3}
BIG_MIB=${BIG_MIB:-1024}
BIG_LAYERS=${BIG_LAYERS:-8}
SMALL_MIB=${SMALL_MIB:-100}
SMALL_LAYERS=${SMALL_LAYERS:-4}
IMAGES=${IMAGES:-big,small}
SCENARIOS=${SCENARIOS:-cold,warm,mount}
BENCH_TMPDIR=${BENCH_TMPDIR:-/tmp}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
BENCH_NICE=${BENCH_NICE:-0}
QUIET_WAIT=${QUIET_WAIT:-0}
NICE=(nice -n "$BENCH_NICE")
BENCHMARKS_MD=${BENCHMARKS_MD:-$ROOT/BENCHMARKS.md}
ONLY=both
RECORD=0
KEEP_TMP=${KEEP_TMP:-0}
ARGV=("$@")

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --record) RECORD=1 ;;
    --only) ONLY=${2:?--only needs ferry or skopeo}; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    --runs) RUNS=${2:?}; shift ;;
    --runs=*) RUNS=${1#--runs=} ;;
    --keep-tmp) KEEP_TMP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case "$ONLY" in both|ferry|skopeo) ;; *) echo "--only must be ferry or skopeo" >&2; exit 2 ;; esac
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 2; }

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TOOLS=()
[ "$ONLY" != skopeo ] && TOOLS+=(ferry)
[ "$ONLY" != ferry ] && TOOLS+=(skopeo)

# ------------------------------------------------------------------ prerequisites
pkgs=()
command -v docker-registry >/dev/null 2>&1 || pkgs+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || pkgs+=(skopeo)
[ -x /usr/bin/time ] || pkgs+=(time)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
command -v timeout >/dev/null 2>&1 || pkgs+=(coreutils)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing missing packages: ${pkgs[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >&2
fi

if [ "$ONLY" != skopeo ]; then
  FERRY_PREBUILT=${FERRY_BIN:+1}
  if [ -z "${FERRY_BIN:-}" ]; then
    log "building ferry (cargo build --release --bin ferry)"
    (cd "$ROOT" && cargo build --release --bin ferry >&2)
    FERRY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry"
  fi
  [ -x "$FERRY_BIN" ] || die "ferry binary not found: $FERRY_BIN"
  FERRY_BIN=$(readlink -f "$FERRY_BIN")
  "$FERRY_BIN" copy --help >/dev/null 2>&1 \
    || die "$FERRY_BIN has no working 'copy' subcommand (use --only skopeo to benchmark skopeo alone)"
  FERRY_SRC_BIN=$FERRY_BIN
  FERRY_BUILT=$(date -r "$FERRY_BIN" -u +%Y-%m-%dT%H:%MZ)
  FERRY_SHA=$(sha256sum "$FERRY_BIN" | cut -c1-12)
fi

builds_running() { pgrep -x rustc >/dev/null 2>&1 || pgrep -x cargo >/dev/null 2>&1; }
if builds_running; then
  log "WARNING: cargo/rustc processes are running; timings on this $(nproc)-core machine will be noisy"
fi
RUNS_TOTAL=0 RUNS_CONTENDED=0
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ temp dir + registries
mkdir -p "$OUT"
TMP=$(mktemp -d "$BENCH_TMPDIR/ferry-bench.XXXXXX")
declare -A REG_PID=() REG_PORT=() REG_DIR=()
if [ "$ONLY" != skopeo ]; then
  # Private copy: a rebuild of target/release/ferry by someone else mid-run must not change the binary under test.
  cp -p "$FERRY_BIN" "$TMP/ferry"
  FERRY_BIN="$TMP/ferry"
fi

cleanup() {
  local rc=$?
  for n in "${!REG_PID[@]}"; do
    kill "${REG_PID[$n]}" 2>/dev/null || true
    wait "${REG_PID[$n]}" 2>/dev/null || true
  done
  if [ -d "$TMP/runs" ]; then
    rm -rf "$OUT/last-run" && mkdir -p "$OUT/last-run"
    cp -r "$TMP/runs/." "$OUT/last-run/" 2>/dev/null || true
    cp "$TMP"/*.log "$OUT/last-run/" 2>/dev/null || true
  fi
  if [ "$KEEP_TMP" = 1 ]; then log "kept temp dir $TMP"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_registry NAME [wipe]: (re)start a registry with filesystem storage under $TMP/NAME
start_registry() {
  local name=$1 wipe=${2:-}
  stop_registry "$name"
  local dir="$TMP/$name" port=${REG_PORT[$name]:-}
  [ -n "$port" ] || port=$("${LIB[@]}" freeport)
  if [ "$wipe" = wipe ]; then rm -rf "$dir/storage"; fi
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: ferry-bench-$name
EOF
  "${NICE[@]}" docker-registry serve "$dir/config.yml" >>"$TMP/registry-$name.log" 2>&1 &
  REG_PID[$name]=$!
  REG_PORT[$name]=$port
  REG_DIR[$name]=$dir
  "${LIB[@]}" wait-registry "127.0.0.1:$port" 20 || die "registry $name failed to start; see $TMP/registry-$name.log"
}

stop_registry() {
  local name=$1 pid=${REG_PID[$1]:-}
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "REG_PID[$name]"
  fi
}

start_registry src
start_registry dst
SRC="127.0.0.1:${REG_PORT[src]}"
DST="127.0.0.1:${REG_PORT[dst]}"
FSTYPE=$(df -T "$TMP" | awk 'NR==2{print $2}')
log "registries: src=$SRC dst=$DST, filesystem storage ($FSTYPE) under $TMP/{src,dst}/storage"

# ------------------------------------------------------------------ images
declare -A IMG_DIGEST=() IMG_BYTES=() IMG_DESC=()

prepare_image() { # name total_mib layers
  local name=$1 mib=$2 layers=$3
  [ $((mib % layers)) -eq 0 ] || die "$name: $mib MiB is not divisible into $layers layers"
  local lmib=$((mib / layers))
  local dir="$OUT/layouts/$name-${layers}x${lmib}MiB"
  if [ ! -f "$dir/.complete" ]; then
    log "generating $name image layout: $layers x $lmib MiB random layers -> $dir"
    rm -rf "$dir"
    "${LIB[@]}" mkimage "$dir" --layers "$layers" --layer-mib "$lmib" --tag v1 --name "ferry-bench-$name" >/dev/null
    touch "$dir/.complete"
  fi
  local digest bytes
  digest=$("${LIB[@]}" layout-digest "$dir" v1)
  bytes=$(du -sb --apparent-size "$dir/blobs" | cut -f1)
  log "pushing $name ($((bytes / 1048576)) MiB, $digest) to $SRC/bench/$name:v1"
  skopeo copy -q --insecure-policy --dest-tls-verify=false --preserve-digests \
    "oci:$dir:v1" "docker://$SRC/bench/$name:v1" >&2
  local got
  got=$("${LIB[@]}" head-digest "$SRC" "bench/$name" v1) || true
  [ "$got" = "$digest" ] || die "push of $name changed the digest: layout $digest, registry $got"
  IMG_DIGEST[$name]=$digest
  IMG_BYTES[$name]=$bytes
  IMG_DESC[$name]="$layers × $lmib MiB layers"
}

IFS=, read -r -a IMAGE_LIST <<<"$IMAGES"
for img in "${IMAGE_LIST[@]}"; do
  case "$img" in
    big) prepare_image big "$BIG_MIB" "$BIG_LAYERS" ;;
    small) prepare_image small "$SMALL_MIB" "$SMALL_LAYERS" ;;
    *) die "unknown image '$img' (use big,small)" ;;
  esac
done

# ------------------------------------------------------------------ timed runs
RESULTS="$TMP/results.tsv"
mkdir -p "$TMP/runs"
: >"$RESULTS"

# timed_run TOOL IMAGE SCENARIO RUN DST_REGISTRY DST_REPO DST_TAG
timed_run() {
  local tool=$1 img=$2 scen=$3 run=$4 dreg=$5 drepo=$6 dtag=$7
  local sref="$SRC/bench/$img:v1" dref="$dreg/$drepo:$dtag"
  local base="$TMP/runs/$img-$scen-$tool-$run"
  local cmd
  if [ "$tool" = ferry ]; then
    cmd=("$FERRY_BIN" copy --plain-http "$SRC")
    [ "$dreg" = "$SRC" ] || cmd+=(--plain-http "$dreg")
    cmd+=(--json "$sref" "$dref")
  else
    cmd=(skopeo copy --insecure-policy --src-tls-verify=false --dest-tls-verify=false
      "docker://$sref" "docker://$dref")
  fi
  printf '%q ' "${cmd[@]}" >"$base.cmd"; echo >>"$base.cmd"
  local waited=0
  while [ "$waited" -lt "$QUIET_WAIT" ] && builds_running; do sleep 2; waited=$((waited + 2)); done
  [ "$waited" -eq 0 ] || log "waited ${waited}s for cargo/rustc to finish"
  sync
  RUNS_TOTAL=$((RUNS_TOTAL + 1))
  if builds_running; then RUNS_CONTENDED=$((RUNS_CONTENDED + 1)); fi
  local t0 t1 rc=0
  t0=$(date +%s%N)
  "${NICE[@]}" timeout "$RUN_TIMEOUT" /usr/bin/time -v -o "$base.time" "${cmd[@]}" >"$base.out" 2>"$base.err" || rc=$?
  t1=$(date +%s%N)
  local wall rss status
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
  read -r rss status < <("${LIB[@]}" gnutime "$base.time" 2>/dev/null || echo "NA NA")
  local ok=ok note=
  if [ "$rc" -ne 0 ]; then
    ok="exit-$rc"; [ "$rc" -eq 124 ] && ok="timeout"
    note=$(tail -n 3 "$base.err" | tr '\t\n' '  ' | cut -c1-300)
  else
    local got
    got=$("${LIB[@]}" head-digest "$dreg" "$drepo" "$dtag" 2>>"$base.err") || true
    if [ "$got" != "${IMG_DIGEST[$img]}" ]; then
      ok="digest-mismatch"; note="target $got != source ${IMG_DIGEST[$img]}"
    elif [ "$tool" = ferry ]; then
      note=$("${LIB[@]}" ferry-json "$base.out")
    fi
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$img" "${IMG_BYTES[$img]}" "$scen" "$tool" "$run" "$wall" "$rss" "$ok" "$note" >>"$RESULTS"
  local rss_mib=NA
  [ "$rss" != NA ] && rss_mib=$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')
  log "$(printf '%-5s %-5s %-6s run %d: %7ss  rss %6s MiB  %s %s' "$img" "$scen" "$tool" "$run" "$wall" "$rss_mib" "$ok" "$note")"
}

# tools_for_run N: alternate which tool goes first
tools_for_run() {
  if [ ${#TOOLS[@]} -eq 2 ] && [ $(($1 % 2)) -eq 0 ]; then echo "${TOOLS[1]} ${TOOLS[0]}"; else echo "${TOOLS[*]}"; fi
}

IFS=, read -r -a SCEN_LIST <<<"$SCENARIOS"
for img in "${IMAGE_LIST[@]}"; do
  for scen in "${SCEN_LIST[@]}"; do
    case "$scen" in
      cold)
        # Fresh target registry (wiped storage, restarted) before every run:
        # no blob of the image exists anywhere in the target.
        for ((i = 1; i <= RUNS; i++)); do
          for tool in $(tools_for_run "$i"); do
            start_registry dst wipe
            timed_run "$tool" "$img" cold "$i" "$DST" "cold/$img-$tool-$i" v1
          done
        done ;;
      warm)
        # Target repo already holds every blob (and the manifest, under tag
        # "seed"); each run pushes to a new tag in that repo.
        start_registry dst wipe
        skopeo copy -q --insecure-policy --src-tls-verify=false --dest-tls-verify=false --preserve-digests \
          "docker://$SRC/bench/$img:v1" "docker://$DST/warm/$img:seed" >&2
        got=$("${LIB[@]}" head-digest "$DST" "warm/$img" seed) || true
        [ "$got" = "${IMG_DIGEST[$img]}" ] || die "warm seed of $img has digest $got"
        for ((i = 1; i <= RUNS; i++)); do
          for tool in $(tools_for_run "$i"); do
            timed_run "$tool" "$img" warm "$i" "$DST" "warm/$img" "$tool-$i"
          done
        done ;;
      mount)
        # Same registry, new repository per run: blobs can be cross-repo mounted.
        for ((i = 1; i <= RUNS; i++)); do
          for tool in $(tools_for_run "$i"); do
            timed_run "$tool" "$img" mount "$i" "$SRC" "mount/$img-$tool-$i" v1
          done
        done ;;
      *) die "unknown scenario '$scen' (use cold,warm,mount)" ;;
    esac
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
cp "$RESULTS" "$OUT/last-results.tsv"
[ "$RUNS_CONTENDED" -eq 0 ] || log "WARNING: cargo/rustc was running at the start of $RUNS_CONTENDED of $RUNS_TOTAL timed runs"

# ------------------------------------------------------------------ report
TABLE=$("${LIB[@]}" summarize "$RESULTS")
echo "$TABLE"

if [ "$RECORD" = 1 ]; then
  cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
  mem=$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
  ferry_ver="not run"
  if [ "$ONLY" != skopeo ]; then
    ferry_ver="$("$FERRY_BIN" --version 2>/dev/null || echo ferry) (tree at record time: git $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo 'no commit')${FERRY_PREBUILT:+, binary given via FERRY_BIN}; binary $FERRY_SRC_BIN built $FERRY_BUILT, sha256 $FERRY_SHA…)"
  fi
  contention="No cargo/rustc process was running at the start of any timed run."
  if [ "$RUNS_CONTENDED" -gt 0 ]; then
    contention="**Other cargo/rustc builds were running at the start of $RUNS_CONTENDED of $RUNS_TOTAL timed runs** (registries and copies ran at nice $BENCH_NICE); expect noise."
  fi
  img_lines=""
  for img in "${IMAGE_LIST[@]}"; do
    img_lines+="- \`$img\`: ${IMG_DESC[$img]} (${IMG_BYTES[$img]} bytes of blobs), random incompressible tar+gzip layers, manifest \`${IMG_DIGEST[$img]}\`"$'\n'
  done
  cmdline="bench/copy.sh${ARGV[*]:+ ${ARGV[*]}}"
  envs="QUIET_WAIT=$QUIET_WAIT BENCH_NICE=$BENCH_NICE RUNS=$RUNS BIG_MIB=$BIG_MIB BIG_LAYERS=$BIG_LAYERS SMALL_MIB=$SMALL_MIB SMALL_LAYERS=$SMALL_LAYERS"
  section="$TMP/section.md"
  cat >"$section" <<EOF
## Copy

\`ferry copy\` vs \`skopeo copy\`, registry to registry over plain HTTP on 127.0.0.1.
Recorded $(date -u '+%Y-%m-%d %H:%M UTC') with \`$envs $cmdline\`.

$TABLE

**Machine:** $(nproc) CPUs ($cpu), $mem RAM, kernel $(uname -r). Load average at start/end: $LOAD_START / $LOAD_END. $contention
**Versions:** $ferry_ver; $(skopeo --version); $(docker-registry --version 2>&1 | head -1).

**Setup:**
- Two \`docker-registry serve\` (CNCF distribution) instances on 127.0.0.1, plain HTTP, \`filesystem\` storage driver in a temp dir under \`$BENCH_TMPDIR\` ($FSTYPE), inmemory blob descriptor cache, access log off.
${img_lines%$'\n'}
- **cold**: target registry storage wiped and registry restarted before every run; new repository per run.
- **warm**: target repository already holds all blobs and the manifest (seeded once by skopeo under another tag); each run copies to a new tag in it.
- **same-registry**: copy within the source registry to a new repository per run (ferry should cross-repo mount; skopeo does what it does).
- $RUNS runs per tool per scenario, alternating ferry/skopeo (order flipped every run). Wall time measured around the process; peak RSS is \`Maximum resident set size\` from \`/usr/bin/time -v\`. After every run the target manifest is HEADed and its \`Docker-Content-Digest\` must equal the source digest, otherwise the run counts as failed.
- ferry: \`ferry copy --plain-http SRC --plain-http DST --json SRC/bench/IMG:v1 DST/REPO:TAG\`; skopeo: \`skopeo copy --insecure-policy --src-tls-verify=false --dest-tls-verify=false docker://… docker://…\` (skopeo keeps its usual blob-info cache in /var/lib/containers/cache). Both with default settings (ferry \`--jobs 4\`, referrers on; skopeo's default parallelism). "ferry blobs" is taken from ferry's \`--json\` report.
EOF
  "${LIB[@]}" record "$BENCHMARKS_MD" "$section"
  log "updated '## Copy' section in $BENCHMARKS_MD"
fi
