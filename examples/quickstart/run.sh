#!/usr/bin/env bash
# Ferry quickstart: starts three local registries (build :5001, dev :5002, prod :5003) and
# `ferry serve` on :8080, pushes an image to the build registry and shows the webhook arriving
# and the promotion job queued. Everything keeps running afterwards; `run.sh stop` stops it.
#
#   examples/quickstart/run.sh          start (or restart) and demo
#   examples/quickstart/run.sh stop     stop everything it started
#
# Environment (defaults are demo values, fine on 127.0.0.1 only):
#   FERRY_DISTRIBUTION_SECRET, FERRY_GENERIC_SECRET, FERRY_BIN (use this ferry binary)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="$repo/.quickstart"
export FERRY_DISTRIBUTION_SECRET="${FERRY_DISTRIBUTION_SECRET:-quickstart-distribution-secret}"
export FERRY_GENERIC_SECRET="${FERRY_GENERIC_SECRET:-quickstart-generic-secret}"
export FERRY_OPERATOR_TOKEN="${FERRY_OPERATOR_TOKEN:-quickstart-operator-token}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

stop() {
  for pidfile in "$state"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "stop" ]; then
  stop
  echo "quickstart stopped (state kept in $state; delete it to start clean)"
  exit 0
fi

for tool in docker-registry skopeo python3 curl; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool is missing; install it with: apt-get install -y docker-registry skopeo python3 curl" >&2
    exit 1
  }
done

stop
mkdir -p "$state"
cd "$repo"

if [ -z "${FERRY_BIN:-}" ]; then
  say "building ferry"
  cargo build -q --bin ferry
  FERRY_BIN="$repo/target/debug/ferry"
fi

wait_for() { # url what
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: $2 did not come up at $1; see $state/*.log" >&2
  exit 1
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

say "starting ferry serve on 127.0.0.1:8080"
"$FERRY_BIN" serve --config "$here/ferry.toml" >"$state/ferry.log" 2>&1 &
echo $! >"$state/ferry.pid"
wait_for "http://127.0.0.1:8080/healthz" "ferry"

say "making a demo image (OCI layout) and pushing it to the build registry as shop/api:1.0.0"
python3 - "$state/demo-image" <<'PY'
import hashlib, json, os, sys
root = sys.argv[1]
os.makedirs(f"{root}/blobs/sha256", exist_ok=True)
def blob(data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{root}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
layer = blob(os.urandom(512 * 1024), "application/vnd.oci.image.layer.v1.tar")
config = blob(json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode(),
              "application/vnd.oci.image.config.v1+json")
manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "config": config, "layers": [layer]}).encode(),
                "application/vnd.oci.image.manifest.v1+json")
manifest["annotations"] = {"org.opencontainers.image.ref.name": "1.0.0"}
json.dump({"schemaVersion": 2, "manifests": [manifest]}, open(f"{root}/index.json", "w"))
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
skopeo copy -q --insecure-policy --dest-tls-verify=false \
  "oci:$state/demo-image:1.0.0" docker://127.0.0.1:5001/shop/api:1.0.0
digest=$(curl -fsSI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  http://127.0.0.1:5001/v2/shop/api/manifests/1.0.0 | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
echo "pushed 127.0.0.1:5001/shop/api:1.0.0 = $digest"

say "waiting for the build registry's webhook to reach ferry"
for _ in $(seq 1 50); do
  grep -q "promotion queued" "$state/ferry.log" && break
  sleep 0.2
done
if ! grep "promotion queued" "$state/ferry.log"; then
  echo "error: no promotion was queued; see $state/ferry.log and $state/build.log" >&2
  exit 1
fi

say "done: the push was verified and its promotion job durably queued"
cat <<TXT
Still running, to explore:
  registries  http://127.0.0.1:5001 (build)  :5002 (dev)  :5003 (prod)
  ferry       http://127.0.0.1:8080/healthz   log: $state/ferry.log
  queue       $state/ferry/queue.db (SQLite)

Send a promotion from any CI:
  body='{"repository":"127.0.0.1:5001/shop/api","tag":"1.0.0","build":"42"}'
  ts=\$(date +%s)
  sig=\$(printf '%s.%s' "\$ts" "\$body" | openssl dgst -sha256 -hmac "\$FERRY_GENERIC_SECRET" -hex | sed 's/^.* //')
  curl -H 'Content-Type: application/json' -H "X-Ferry-Timestamp: \$ts" \\
       -H "X-Ferry-Signature: sha256=\$sig" -d "\$body" http://127.0.0.1:8080/hooks/generic

Stop everything: examples/quickstart/run.sh stop
TXT
