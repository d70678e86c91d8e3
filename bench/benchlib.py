#!/usr/bin/env python3
"""Helpers for bench/copy.sh (stdlib only).

Subcommands:
  mkimage DIR --layers N --layer-mib M --tag TAG [--name NAME]
      Write an OCI image layout with N random, incompressible layers.
      Each layer is a real tar (one file of random bytes) wrapped in a real
      gzip stream using stored (level 0) deflate blocks, so the blob is
      valid tar+gzip, is detected as gzip by content sniffers (skopeo),
      and cannot be shrunk by recompression. Prints the manifest digest.
  layout-digest DIR TAG     print the manifest digest for TAG from index.json
  freeport                  print a free TCP port on 127.0.0.1
  head-digest HOST:PORT REPO REF
                            HEAD the manifest over plain HTTP, print Docker-Content-Digest
  wait-registry HOST:PORT [TIMEOUT]
                            poll GET /v2/ until 200
  gnutime FILE              parse `/usr/bin/time -v` output: prints "<max_rss_kib> <exit_status>"
  summarize RESULTS.tsv     print the markdown results table (medians, ratios, targets)
  record BENCHMARKS.md SECTION.md
                            replace (or append) the "## Copy" section of BENCHMARKS.md
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import re
import socket
import statistics
import sys
import tarfile
import time
import zlib

CHUNK = 4 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


# ---------------------------------------------------------------- image layout


def _write_blob(blobdir, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobdir, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def _make_layer(blobdir, index, size):
    """Stream a random tar through gzip(level 0) into a blob; return (digest, size, diff_id)."""
    tmp = os.path.join(blobdir, f".layer-{index}.tmp")
    tar_hash = hashlib.sha256()
    blob_hash = hashlib.sha256()
    comp = zlib.compressobj(0, zlib.DEFLATED, 31)  # wbits 31 => gzip wrapper
    written = 0

    with open(tmp, "wb") as out:

        def feed(raw):
            nonlocal written
            tar_hash.update(raw)
            z = comp.compress(raw)
            if z:
                blob_hash.update(z)
                out.write(z)
                written += len(z)

        ti = tarfile.TarInfo(f"ferry-bench/layer{index}.bin")
        ti.size = size
        ti.mode = 0o644
        ti.mtime = 0
        ti.uname = ti.gname = "root"
        feed(ti.tobuf(format=tarfile.PAX_FORMAT))
        left = size
        while left:
            n = min(CHUNK, left)
            feed(os.urandom(n))
            left -= n
        pad = (-size) % 512
        feed(b"\0" * (pad + 1024))  # pad to block + two zero end-of-archive blocks
        z = comp.flush()
        blob_hash.update(z)
        out.write(z)
        written += len(z)

    digest = blob_hash.hexdigest()
    os.replace(tmp, os.path.join(blobdir, digest))
    return "sha256:" + digest, written, "sha256:" + tar_hash.hexdigest()


def cmd_mkimage(a):
    outdir = a.dir
    blobdir = os.path.join(outdir, "blobs", "sha256")
    os.makedirs(blobdir, exist_ok=True)
    layer_size = a.layer_mib << 20
    layers, diff_ids, history = [], [], []
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.monotonic()
    for i in range(a.layers):
        d, sz, diff = _make_layer(blobdir, i, layer_size)
        layers.append({"mediaType": OCI_LAYER_GZ, "digest": d, "size": sz})
        diff_ids.append(diff)
        history.append({"created": created, "created_by": f"ferry-bench: random layer {i} ({a.layer_mib} MiB)"})
        print(f"  layer {i + 1}/{a.layers}: {d} ({sz} bytes)", file=sys.stderr)
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.opencontainers.image.title": a.name or "ferry-bench"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    cdig, csz = _write_blob(blobdir, json.dumps(config, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cdig, "size": csz},
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": created},
    }
    mdig, msz = _write_blob(blobdir, json.dumps(manifest, separators=(",", ":")).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": mdig,
                "size": msz,
                "annotations": {"org.opencontainers.image.ref.name": a.tag},
            }
        ],
    }
    with open(os.path.join(outdir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump(index, f)
    total = sum(l["size"] for l in layers) + csz + msz
    print(f"  wrote {outdir}: {total} bytes in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    print(mdig)


def cmd_layout_digest(a):
    with open(os.path.join(a.dir, "index.json")) as f:
        index = json.load(f)
    for m in index.get("manifests", []):
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == a.tag:
            print(m["digest"])
            return
    sys.exit(f"tag {a.tag} not in {a.dir}/index.json")


# ---------------------------------------------------------------- registry bits


def cmd_freeport(_a):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def _split(hostport):
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def cmd_head_digest(a):
    host, port = _split(a.registry)
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("HEAD", f"/v2/{a.repo}/manifests/{a.ref}", headers={"Accept": MANIFEST_ACCEPT})
    r = c.getresponse()
    r.read()
    d = r.getheader("Docker-Content-Digest")
    if r.status != 200 or not d:
        print(f"HEAD /v2/{a.repo}/manifests/{a.ref} -> {r.status}", file=sys.stderr)
        print("none")
        sys.exit(1)
    print(d)


def cmd_wait_registry(a):
    host, port = _split(a.registry)
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", "/v2/")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"registry {a.registry} not ready after {a.timeout}s")


def cmd_ferry_json(a):
    """Summarise ferry's --json report as 'blobs=copied/mounted/skipped moved=BYTES'."""
    try:
        with open(a.file) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
        r = json.loads(lines[-1])
        print(f"blobs={r['blobs_copied']}/{r['blobs_mounted']}/{r['blobs_skipped']} moved={r['bytes_transferred']}")
    except (OSError, IndexError, KeyError, ValueError):
        print("blobs=?")


def cmd_gnutime(a):
    rss, status = "NA", "NA"
    with open(a.file, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("Maximum resident set size (kbytes):"):
                rss = line.rsplit(":", 1)[1].strip()
            elif line.startswith("Exit status:"):
                status = line.rsplit(":", 1)[1].strip()
    print(rss, status)


# ---------------------------------------------------------------- reporting

SCEN_ORDER = {"cold": 0, "warm": 1, "mount": 2}
SCEN_LABEL = {"cold": "cold", "warm": "warm", "mount": "same-registry"}
TARGET_COLD = 1.5
TARGET_RSS_MIB = 32.0


def _fmt_t(x):
    return "—" if x is None else f"{x:.2f} s"


def _fmt_m(x):
    return "—" if x is None else f"{x:.1f} MiB"


def cmd_summarize(a):
    # TSV columns: image image_bytes scenario tool run wall_s rss_kib ok note
    rows = {}
    sizes = {}
    failures = []
    with open(a.results) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            image, nbytes, scen, tool, run, wall, rss, ok, *note = line.rstrip("\n").split("\t")
            sizes[image] = int(nbytes)
            key = (image, scen)
            d = rows.setdefault(key, {}).setdefault(tool, {"t": [], "m": [], "bad": 0, "n": 0, "notes": []})
            d["n"] += 1
            if ok != "ok":
                d["bad"] += 1
                failures.append(f"{image}/{SCEN_LABEL.get(scen, scen)}/{tool} run {run}: {ok} {' '.join(note)}".rstrip())
                continue
            d["t"].append(float(wall))
            m_ = re.search(r"blobs=(\S+)", " ".join(note))
            if m_:
                d["notes"].append(m_.group(1))
            if rss not in ("NA", ""):
                d["m"].append(int(rss) / 1024.0)

    def med(tool_d, k):
        if not tool_d or not tool_d[k]:
            return None
        return statistics.median(tool_d[k])

    big = "big"  # the RSS target is defined for the big (1 GiB) image
    out = []
    out.append(
        "| image | scenario | ferry time | skopeo time | speedup (skopeo/ferry) | ferry peak RSS | skopeo peak RSS | ferry blobs copied/mounted/skipped | runs (ok/total) | target | result |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---|---|---|---|")
    verdicts = []
    for (image, scen) in sorted(rows, key=lambda k: (-sizes[k[0]], SCEN_ORDER.get(k[1], 9))):
        r = rows[(image, scen)]
        fe, sk = r.get("ferry"), r.get("skopeo")
        ft, st = med(fe, "t"), med(sk, "t")
        fm, sm = med(fe, "m"), med(sk, "m")
        speed = (st / ft) if (ft and st) else None
        runs = ", ".join(f"{t} {d['n'] - d['bad']}/{d['n']}" for t, d in sorted(r.items()))
        targets, results = [], []
        ferry_failed = fe is not None and fe["bad"] > 0
        if scen == "cold":
            targets.append(f"≥ {TARGET_COLD}× faster")
            results.append(
                "n/a" if speed is None and not ferry_failed else ("FAIL" if ferry_failed or speed < TARGET_COLD else "PASS")
            )
        elif scen == "warm":
            targets.append("no slower (≥ 1.0×)")
            results.append(
                "n/a" if speed is None and not ferry_failed else ("FAIL" if ferry_failed or speed < 1.0 else "PASS")
            )
        if image == big:
            targets.append(f"ferry RSS ≤ {TARGET_RSS_MIB:.0f} MiB")
            results.append("n/a" if fm is None and not ferry_failed else ("FAIL" if ferry_failed or fm > TARGET_RSS_MIB else "PASS"))
        for t, res in zip(targets, results):
            verdicts.append((f"{image} {SCEN_LABEL.get(scen, scen)}: {t}", res))
        blobs = "—"
        if fe and fe["notes"]:
            uniq = sorted(set(fe["notes"]), key=fe["notes"].index)
            blobs = ", ".join(uniq)
        out.append(
            "| {} ({:.0f} MiB) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                image,
                sizes[image] / 1048576,
                SCEN_LABEL.get(scen, scen),
                _fmt_t(ft),
                _fmt_t(st),
                "—" if speed is None else f"{speed:.2f}×",
                _fmt_m(fm),
                _fmt_m(sm),
                blobs,
                runs,
                "; ".join(targets) or "—",
                "; ".join(results) or "—",
            )
        )
    out.append("")
    out.append("Times and RSS are medians over successful runs. Speedup > 1 means ferry is faster.")
    if verdicts:
        npass = sum(1 for _, v in verdicts if v == "PASS")
        nfail = sum(1 for _, v in verdicts if v == "FAIL")
        out.append(f"Targets: {npass} pass, {nfail} fail, {len(verdicts) - npass - nfail} n/a.")
    if failures:
        out.append("")
        out.append("Failed runs (excluded from medians):")
        for f_ in failures:
            out.append(f"- {f_}")
    print("\n".join(out))


def cmd_record(a):
    with open(a.section) as f:
        section = f.read().rstrip("\n") + "\n"
    try:
        with open(a.file) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    m = re.search(r"^## Copy[^\n]*\n", text, flags=re.M)
    if m:
        nxt = re.search(r"^## ", text[m.end():], flags=re.M)
        end = m.end() + nxt.start() if nxt else len(text)
        text = text[: m.start()] + section + ("\n" if nxt else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(a.file, "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mkimage")
    s.add_argument("dir")
    s.add_argument("--layers", type=int, required=True)
    s.add_argument("--layer-mib", type=int, required=True)
    s.add_argument("--tag", required=True)
    s.add_argument("--name")
    s.set_defaults(f=cmd_mkimage)
    s = sub.add_parser("layout-digest")
    s.add_argument("dir")
    s.add_argument("tag")
    s.set_defaults(f=cmd_layout_digest)
    s = sub.add_parser("freeport")
    s.set_defaults(f=cmd_freeport)
    s = sub.add_parser("head-digest")
    s.add_argument("registry")
    s.add_argument("repo")
    s.add_argument("ref")
    s.set_defaults(f=cmd_head_digest)
    s = sub.add_parser("wait-registry")
    s.add_argument("registry")
    s.add_argument("timeout", type=float, nargs="?", default=20.0)
    s.set_defaults(f=cmd_wait_registry)
    s = sub.add_parser("ferry-json")
    s.add_argument("file")
    s.set_defaults(f=cmd_ferry_json)
    s = sub.add_parser("gnutime")
    s.add_argument("file")
    s.set_defaults(f=cmd_gnutime)
    s = sub.add_parser("summarize")
    s.add_argument("results")
    s.set_defaults(f=cmd_summarize)
    s = sub.add_parser("record")
    s.add_argument("file")
    s.add_argument("section")
    s.set_defaults(f=cmd_record)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
