#!/usr/bin/env bash
# Ferry quickstart: starts three local registries (build :5001, dev :5002, prod :5003) and
# `ferry serve` on :8080, then walks one image after another through the pipeline of
# ferry.toml (dev: automatic, prod: approval), printing each step:
#
#   1. push shop/api:1.0.0 to the build registry → its webhook reaches ferry → dev (auto)
#   2. prod waits for an approval (`ferry status`) → `ferry approve` → prod
#   3. push shop/api:1.1.0 → dev → approve → prod
#   4. `ferry rollback shop-api prod` → prod runs 1.0.0 again
#
# Everything keeps running afterwards; `run.sh stop` stops it. Each start begins with empty
# registries and an empty ledger (in .quickstart/). On a fresh machine it first installs what it
# runs and is missing (docker-registry, skopeo, python3, curl from Debian), saying so.
#
#   examples/quickstart/run.sh          start (or restart) and demo
#   examples/quickstart/run.sh stop     stop everything it started
#
# On a terminal it pauses between steps (press Enter); otherwise it runs straight through.
#
# Environment (defaults are demo values, fine on 127.0.0.1 only):
#   FERRY_DISTRIBUTION_SECRET, FERRY_GENERIC_SECRET, FERRY_OPERATOR_TOKEN,
#   FERRY_USER (who approves and rolls back), FERRY_BIN (use this ferry binary)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="$repo/.quickstart"
export FERRY_DISTRIBUTION_SECRET="${FERRY_DISTRIBUTION_SECRET:-quickstart-distribution-secret}"
export FERRY_GENERIC_SECRET="${FERRY_GENERIC_SECRET:-quickstart-generic-secret}"
export FERRY_OPERATOR_TOKEN="${FERRY_OPERATOR_TOKEN:-quickstart-operator-token}"
# The ferry CLI reads these: where the server is, its token, and who is acting.
export FERRY_SERVER="http://127.0.0.1:8080"
export FERRY_USER="${FERRY_USER:-${USER:-quickstart-operator}}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
pause() {
  if [ -t 0 ] && [ -t 1 ]; then
    read -r -p "    (Enter to continue) " _ || true
  fi
}
fail() {
  echo "error: $*; see $state/*.log" >&2
  exit 1
}

stop() {
  for pidfile in "$state"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "stop" ]; then
  stop
  echo "quickstart stopped (state kept in $state until the next run.sh, which starts clean)"
  exit 0
fi

# A fresh machine: install what the demo runs (same logic as scripts/test).
# shellcheck source=../../scripts/lib/install.sh
. "$repo/scripts/lib/install.sh"
install_debian "the quickstart runs them" docker-registry skopeo python3 curl
require_tools docker-registry skopeo python3 curl

stop
rm -rf "$state"
mkdir -p "$state"
cd "$repo"

if [ -z "${FERRY_BIN:-}" ]; then
  say "building ferry"
  cargo build -q --bin ferry
  FERRY_BIN="$repo/target/debug/ferry"
fi
ferry() { "$FERRY_BIN" "$@"; }

wait_for() { # url what
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "$2 did not come up at $1"
}

say "starting registries: build 127.0.0.1:5001, dev 127.0.0.1:5002, prod 127.0.0.1:5003"
for spec in build:5001 dev:5002 prod:5003; do
  name="${spec%%:*}" port="${spec##*:}"
  mkdir -p "$state/$name"
  notifications=""
  if [ "$name" = build ]; then
    notifications="
notifications:
  endpoints:
    - name: ferry
      url: http://127.0.0.1:8080/hooks/distribution
      headers:
        X-Ferry-Secret: [\"$FERRY_DISTRIBUTION_SECRET\"]
      timeout: 2s
      threshold: 3
      backoff: 1s
      ignoredmediatypes: [application/octet-stream]"
  fi
  cat > "$state/$name.yml" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $state/$name}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}$notifications
YAML
  docker-registry serve "$state/$name.yml" >"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
  wait_for "http://127.0.0.1:$port/v2/" "the $name registry"
done

say "starting ferry serve on 127.0.0.1:8080 (pipeline shop-api: build → dev (auto) → prod (approval))"
"$FERRY_BIN" serve --config "$here/ferry.toml" >"$state/ferry.log" 2>&1 &
echo $! >"$state/ferry.pid"
wait_for "http://127.0.0.1:8080/healthz" "ferry"

# make_image TAG: a small random image in an OCI layout at $state/images/TAG.
make_image() {
  python3 - "$state/images/$1" "$1" <<'PY'
import hashlib, json, os, sys
root, tag = sys.argv[1], sys.argv[2]
os.makedirs(f"{root}/blobs/sha256", exist_ok=True)
def blob(data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{root}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
layer = blob(os.urandom(512 * 1024), "application/vnd.oci.image.layer.v1.tar")
config = blob(json.dumps({"architecture": "amd64", "os": "linux",
                          "config": {"Labels": {"org.opencontainers.image.version": tag}},
                          "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode(),
              "application/vnd.oci.image.config.v1+json")
manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "config": config, "layers": [layer]}).encode(),
                "application/vnd.oci.image.manifest.v1+json")
manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
json.dump({"schemaVersion": 2, "manifests": [manifest]}, open(f"{root}/index.json", "w"))
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}

# registry_digest PORT REFERENCE: the digest a registry serves for shop/api:REFERENCE.
registry_digest() {
  curl -fsSI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://127.0.0.1:$1/v2/shop/api/manifests/$2" 2>/dev/null |
    tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}'
}

# push TAG: builds an image and pushes it to the build registry as shop/api:TAG; sets $digest.
push() {
  make_image "$1"
  run skopeo copy -q --insecure-policy --dest-tls-verify=false \
    "oci:$state/images/$1:$1" "docker://127.0.0.1:5001/shop/api:$1"
  digest="$(registry_digest 5001 "$1")"
  [ -n "$digest" ] || fail "127.0.0.1:5001/shop/api:$1 is not in the build registry after the push"
  echo "pushed 127.0.0.1:5001/shop/api:$1 = $digest"
}

# status_field STAGE current: the digest the stage runs; status_field STAGE pending DIGEST: the
# id of the promotion of DIGEST waiting at the stage's gate. Empty when none (from `ferry status`).
status_field() {
  ferry status shop-api --json 2>/dev/null | python3 -c '
import json, sys
stage, field, digest = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    stages = json.load(sys.stdin)[0]["stages"]
except ValueError:
    sys.exit(0)
for s in stages:
    if s["name"] != stage:
        continue
    if field == "current":
        print((s["current"] or {}).get("digest", ""))
    else:
        print(next((p["id"] for p in s["pending"] if p["digest"] == digest), ""))
' "$1" "$2" "${3:-}"
}

wait_current() { # STAGE DIGEST
  for _ in $(seq 1 300); do
    [ "$(status_field "$1" current)" = "$2" ] && return 0
    sleep 0.2
  done
  fail "$1 is not running $2 after 60 s"
}

wait_pending() { # STAGE DIGEST → prints the promotion id
  local id
  for _ in $(seq 1 300); do
    id="$(status_field "$1" pending "$2")"
    [ -n "$id" ] && { echo "$id"; return 0; }
    sleep 0.2
  done
  fail "no promotion of $2 is waiting at $1 after 60 s"
}

# show_registry PORT TAG: the digest a stage's registry serves for the tag.
show_registry() {
  echo "127.0.0.1:$1/shop/api:$2 = $(registry_digest "$1" "$2")"
}

# release TAG: push → dev (auto) → prod waits → approve → prod. Sets $digest.
release() {
  say "pushing shop/api:$1 to the build registry; its webhook tells ferry"
  push "$1"
  wait_current dev "$digest"
  echo "dev runs $1 (gate: auto):"
  show_registry 5002 dev
  id="$(wait_pending prod "$digest")"
  say "prod waits for an approval of $1"
  run ferry status
  pause
  say "approving $id as $FERRY_USER"
  run ferry approve "$id"
  wait_current prod "$digest"
  echo "prod runs $1:"
  show_registry 5003 prod
  run ferry status
  pause
}

release 1.0.0
first="$digest"
release 1.1.0
second="$digest"

say "rolling prod back to its previous digest"
run ferry rollback shop-api prod
wait_current prod "$first"
[ "$(registry_digest 5003 prod)" = "$first" ] || fail "prod's registry tag did not move back to 1.0.0"
echo "prod runs 1.0.0 again (1.1.0 was $second):"
show_registry 5003 prod
run ferry status
say "the ledger: every promotion, newest first"
run ferry history shop-api

say "done: 1.0.0 and 1.1.0 went build → dev → prod by digest, and prod was rolled back to 1.0.0"
# Demo defaults are shown as they are; a token or secret of your own is never printed.
shown() { # VALUE DEFAULT NAME
  if [ "$1" = "$2" ]; then echo "$1"; else echo "\$$3"; fi
}
token="$(shown "$FERRY_OPERATOR_TOKEN" quickstart-operator-token FERRY_OPERATOR_TOKEN)"
generic="$(shown "$FERRY_GENERIC_SECRET" quickstart-generic-secret FERRY_GENERIC_SECRET)"
cat <<TXT
Still running, to explore:
  registries  http://127.0.0.1:5001 (build)  :5002 (dev)  :5003 (prod)
  ferry       http://127.0.0.1:8080/healthz   log: $state/ferry.log
  data        $state/ferry/ (queue.db, ledger.db: SQLite)

Web console: http://127.0.0.1:8080/ — sign in with a personal token:
  quickstart-ana-token-0123456789abcdef01   (ana: promote, roll back, redrive)
  quickstart-ben-token-0123456789abcdef01   (ben: approve prod)

Operate it (the ferry CLI reads FERRY_SERVER, FERRY_OPERATOR_TOKEN and FERRY_USER):
  export FERRY_SERVER=$FERRY_SERVER FERRY_OPERATOR_TOKEN=$token
  $FERRY_BIN status
  $FERRY_BIN rollback shop-api prod --to $second
  $FERRY_BIN history shop-api

Send a promotion from any CI:
  export FERRY_GENERIC_SECRET=$generic
  body='{"repository":"127.0.0.1:5001/shop/api","tag":"1.0.0","build":"42"}'
  ts=\$(date +%s)
  sig=\$(printf '%s.%s' "\$ts" "\$body" | openssl dgst -sha256 -hmac "\$FERRY_GENERIC_SECRET" -hex | sed 's/^.* //')
  curl -H 'Content-Type: application/json' -H "X-Ferry-Timestamp: \$ts" \\
       -H "X-Ferry-Signature: sha256=\$sig" -d "\$body" http://127.0.0.1:8080/hooks/generic

Stop everything: examples/quickstart/run.sh stop
TXT
