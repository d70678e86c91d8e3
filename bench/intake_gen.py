#!/usr/bin/env python3
"""Helpers for bench/intake.sh (stdlib only).

Subcommands:
  pool --kind generic|acr --secret-file F --out PREFIX --threads T --count N --tag RUN
      Write T request files PREFIX.0 .. PREFIX.{T-1} (N requests in all) for
      bench/intake/pool.lua. Each request is "<length>\n" then that many bytes:
      the headers ("Name: value\r\n" each, Content-Length last), a blank line,
      the compact JSON body. pool.lua puts the request line and Host in front. Every request names a digest nobody
      else uses (so Ferry's dedup never merges two), and generic requests are
      signed now: X-Ferry-Timestamp = now, X-Ferry-Signature = sha256=<hex
      HMAC-SHA256(secret, "{timestamp}.{body}")>, so they are fresh (±5 min) and
      each signature is new (Ferry refuses replays). ACR requests carry
      "Authorization: Bearer <secret>" and a unique delivery id.
  freeport                       print a free TCP port on 127.0.0.1
  wait-http URL [TIMEOUT]        poll until URL answers 200
  wait-quiet TIMEOUT [PCT]       wait until the CPUs are ≥ PCT % idle (3 × 2 s) and the hypervisor
                                 steals < 5 % of them while they spin; print "idle% steal%"
  wait-port PORT [TIMEOUT]       poll until 127.0.0.1:PORT accepts connections
  settle DB [TIMEOUT]            wait until the job count is stable, print it
  count-sender DB SENDER         print the number of jobs whose request came from SENDER
  max-seq DB                     print the highest job seq (0 when empty)
  cpu PID                        JSON: CPU seconds (user+sys) of PID and of its queue writer thread
  count DB                       print the number of rows in the jobs table
  fsync DIR [N]                  median/p99 ms of fsync after appending 16 KiB to a file in DIR
  check --label L --conns C --wrk-out F --db DB --before N --ids F [--log F --log-before N]
      Parse the INTAKE_RESULT line of a wrk run, check the answers (all 202,
      no socket errors, no duplicates, pool not exhausted) and, for Ferry rows,
      that every job id answered 202 is in the queue DB and that the number of
      new jobs equals the number of 202s (up to the requests still in flight
      when wrk stopped, which Ferry committed but wrk never read). Prints one
      JSON line (for results.jsonl) and a human summary on stderr.
  summarize RESULTS.jsonl        markdown table + targets (exit 1 if any target fails)
  machine DIR                    markdown list: CPU, cores, kernel, disk of DIR, date
  record BENCHMARKS.md SECTION.md
                                 replace (or append) the "## Intake" section only
"""

import argparse
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

SOURCE_REGISTRY = "127.0.0.1:5001"
REPOSITORY = "shop/api"

# Targets (DESIGN.md "Performance" → Intake), checked per Ferry row.
TARGET_RATIO = 0.3
TARGET_P99_MS = 10.0


# ---------------------------------------------------------------- request pools


def cmd_pool(a):
    with open(a.secret_file, "rb") as f:
        secret = f.read().strip()
    nonce = os.urandom(8).hex()
    per_thread = [a.count // a.threads + (1 if k < a.count % a.threads else 0) for k in range(a.threads)]
    ts = str(int(time.time()))
    seq = 0
    for tid, count in enumerate(per_thread):
        with open(f"{a.out}.{tid}", "wb") as out:
            chunks = []
            for _ in range(count):
                seq += 1
                digest = "sha256:" + hashlib.sha256(f"{nonce}/{a.tag}/{seq}".encode()).hexdigest()
                if a.kind == "generic":
                    body = json.dumps(
                        {
                            "repository": f"{SOURCE_REGISTRY}/{REPOSITORY}",
                            "tag": "v1",
                            "digest": digest,
                            "build": str(seq),
                        },
                        separators=(",", ":"),
                    )
                    mac = hmac.new(secret, f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
                    headers = [
                        "Content-Type: application/json",
                        f"X-Ferry-Timestamp: {ts}",
                        f"X-Ferry-Signature: sha256={mac}",
                    ]
                else:
                    body = json.dumps(
                        {
                            "id": str(uuid.uuid4()),
                            "action": "push",
                            "target": {"repository": REPOSITORY, "tag": "v1", "digest": digest},
                            "request": {"host": SOURCE_REGISTRY},
                        },
                        separators=(",", ":"),
                    )
                    headers = [
                        "Content-Type: application/json",
                        f"Authorization: Bearer {secret.decode()}",
                    ]
                # What follows the request line and Host header, as wrk.format would write it;
                # prefixed by its length so that pool.lua loads it with a few string.find calls.
                body_bytes = body.encode()
                headers.append(f"Content-Length: {len(body_bytes)}")
                rest = ("\r\n".join(headers) + "\r\n\r\n").encode() + body_bytes
                chunks.append(b"%d\n" % len(rest) + rest)
                if len(chunks) >= 10000:
                    out.write(b"".join(chunks))
                    chunks = []
            if chunks:
                out.write(b"".join(chunks))


# ---------------------------------------------------------------- small tools


def cmd_freeport(_a):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def cmd_wait_http(a):
    deadline = time.time() + a.timeout
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(a.url, timeout=2) as r:
                if r.status == 200:
                    return
                last = r.status
        except urllib.error.HTTPError as e:
            last = e.code
        except OSError as e:
            last = e
        time.sleep(0.1)
    sys.exit(f"{a.url} did not answer 200 within {a.timeout}s (last: {last})")


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return idle, sum(fields)


def cmd_wait_quiet(a):
    """Wait (at most TIMEOUT s) until the CPUs were ≥ THRESHOLD % idle for 3 samples of 2 s in a row;
    print the idle % of the last sample. Other work on a 2-core machine skews every number."""
    deadline = time.time() + a.timeout
    streak = 0
    pct = 0.0
    while True:
        i0, t0 = _cpu_times()
        time.sleep(2)
        i1, t1 = _cpu_times()
        pct = 100.0 * (i1 - i0) / max(1, t1 - t0)
        streak = streak + 1 if pct >= a.threshold else 0
        if streak >= 3:
            steal = _steal_while_spinning()
            if steal < 5.0:
                break
            streak = 0
        if time.time() >= deadline:
            steal = _steal_while_spinning()
            break
    print(f"{pct:.0f} {steal:.0f}")


def _steal_while_spinning(seconds=2.0):
    """Percent of CPU time the hypervisor took while every CPU wanted to run: an idle VM sees no
    steal, so it must be asked for CPU to show it."""

    def fields():
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]

    before = fields()
    spin = f"import time\nt = time.time() + {seconds}\nwhile time.time() < t: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.wait()
    after = fields()
    total = sum(after) - sum(before)
    return 100.0 * (after[7] - before[7]) / max(1, total)


def cmd_wait_port(a):
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", a.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on 127.0.0.1:{a.port} after {a.timeout}s")


def cmd_settle(a):
    """Wait until the job count stops moving (requests in flight when wrk stopped), print it."""
    last = job_count(a.db)
    stable = 0
    deadline = time.time() + a.timeout
    while time.time() < deadline and stable < 3:
        time.sleep(0.2)
        now = job_count(a.db)
        stable = stable + 1 if now == last else 0
        last = now
    print(last)


def cpu_seconds(pid):
    """CPU time (user+sys, seconds) of process PID, of its queue writer thread, and busy CPU time of
    the whole machine (all CPUs, from /proc/stat)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path):
        with open(path) as f:
            text = f.read()
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        return comm, (int(fields[11]) + int(fields[12])) / tick

    _, total = stat(f"/proc/{pid}/stat")
    # Everyone else, to name what disturbed a run (kernel threads included).
    procs = {}
    for other in os.listdir("/proc"):
        if not other.isdigit() or other == str(pid):
            continue
        try:
            comm, secs = stat(f"/proc/{other}/stat")
        except (OSError, ValueError):
            continue
        if comm != "wrk" and secs > 0:
            procs[f"{comm}[{other}]"] = secs
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # irq + softirq (loopback TCP is partly processed there) and steal (the hypervisor).
    irq, steal = (fields[5] + fields[6]) / tick, fields[7] / tick
    idle, all_ = _cpu_times()
    busy = (all_ - idle) / tick
    writer = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm, secs = stat(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue
        if comm == "ferry-queue-wri":  # the writer thread (names are cut to 15 bytes)
            writer += secs
    return {"total": total, "writer": writer, "system_busy": busy, "irq": irq, "steal": steal, "procs": procs}


def cmd_cpu(a):
    print(json.dumps(cpu_seconds(a.pid)))


def _connect(db):
    # Read-only use; WAL lets us read while ferry's writer keeps committing.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    return conn


def job_count(db):
    conn = _connect(db)
    try:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    finally:
        conn.close()


def cmd_count(a):
    print(job_count(a.db))


def cmd_count_sender(a):
    conn = _connect(a.db)
    try:
        print(
            conn.execute(
                "SELECT count(*) FROM jobs WHERE payload LIKE ?", (f'%"sender":"{a.sender}"%',)
            ).fetchone()[0]
        )
    finally:
        conn.close()


def cmd_fsync(a):
    """Like one small group commit: append a few 4 KiB frames to a log file, then fsync(2)
    (a commit of Ferry's queue and the fdatasync its sync thread makes), restarting at offset 0 now and then (as the WAL
    does after a checkpoint)."""
    path = os.path.join(a.dir, ".intake-fsync-probe")
    block = os.urandom(4096)
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        offset = 0
        for k in range(a.n):
            for _ in range(4):
                os.pwrite(fd, block, offset)
                offset += 4096
            if offset >= 4 << 20:
                offset = 0
            t = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    print(f"{statistics.median(times):.2f} {times[int(len(times) * 0.99) - 1]:.2f}")


# ---------------------------------------------------------------- one run


def parse_wrk(path):
    with open(path) as f:
        text = f.read()
    m = re.search(r"^INTAKE_RESULT (\{.*\})\s*$", text, flags=re.M)
    if not m:
        sys.exit(f"no INTAKE_RESULT line in {path}:\n{text[-2000:]}")
    return json.loads(m.group(1))


def cmd_check(a):
    r = parse_wrk(a.wrk_out)
    secs = r["duration_us"] / 1e6
    statuses = {int(k): v for k, v in r["statuses"].items()}
    ok = statuses.get(202, 0)
    non202 = sum(v for k, v in statuses.items() if k != 202)
    sock = sum(r["socket_errors"].values())
    rec = {
        "label": a.label,
        "target": a.target,
        "route": a.route,
        "conns": a.conns,
        "threads": a.threads,
        "duration_s": round(secs, 2),
        "requests": r["requests"],
        "rps": r["requests"] / secs if secs else 0.0,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "ok202": ok,
        "non202": non202,
        "statuses": r["statuses"],
        "socket_errors": r["socket_errors"],
        "duplicates": r["duplicates"],
        "exhausted": r["exhausted"],
        "pool": r["pool"],
        "samples": r["samples"],
        "problems": [],
    }
    if a.sigs_before is not None:
        rec["sigs_before"] = a.sigs_before
    problems = rec["problems"]
    if non202:
        problems.append(f"{non202} non-202 answers {r['statuses']}")
    if sock:
        problems.append(f"socket errors {r['socket_errors']}")
    if r["duplicates"]:
        problems.append(f"{r['duplicates']} answers were duplicates (dedup hit: digests not unique)")
    if r["exhausted"]:
        problems.append(f"request pool ({r['pool']}) exhausted; raise POOL_FACTOR")
    if a.cpu_before and a.cpu_after:
        b, e = json.loads(a.cpu_before), json.loads(a.cpu_after)
        if r["requests"]:
            rec["cpu_us_per_req"] = (e["total"] - b["total"]) / r["requests"] * 1e6
            rec["server_cores"] = (e["total"] - b["total"]) / secs if secs else 0.0
            if a.client_cpu is not None and "system_busy" in e:
                # What neither the server nor wrk used: other processes (and interrupts).
                other = (e["system_busy"] - b["system_busy"]) - (e["total"] - b["total"]) - a.client_cpu
                rec["client_cores"] = a.client_cpu / secs if secs else 0.0
                rec["other_cores"] = max(0.0, other / secs) if secs else 0.0
                if secs and "procs" in e:
                    used = {k: (v - b["procs"].get(k, 0.0)) / secs for k, v in e["procs"].items()}
                    used["irq+softirq"] = (e["irq"] - b["irq"]) / secs
                    used["steal"] = (e["steal"] - b["steal"]) / secs
                    top = sorted(used.items(), key=lambda kv: -kv[1])[:4]
                    rec["other_top"] = ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.02)
            if e.get("writer"):
                rec["writer_us_per_req"] = (e["writer"] - b["writer"]) / r["requests"] * 1e6
                rec["writer_cores"] = (e["writer"] - b["writer"]) / secs if secs else 0.0
    if rec.get("other_cores", 0.0) > a.max_other_cores:
        problems.append(
            f"disturbed: other processes used {rec['other_cores']:.2f} cores during the run "
            f"(limit {a.max_other_cores}; {rec.get('other_top') or 'no single process'}); rerun on a quiet machine"
        )
    if a.db:
        # New rows in the queue while this run lasted (the caller waited for the count to settle).
        after = job_count(a.db)
        new_jobs = after - a.before
        with open(a.ids) as f:
            ids = [line.strip() for line in f if line.strip()]
        conn = _connect(a.db)
        try:
            conn.execute("CREATE TEMP TABLE seen (id TEXT PRIMARY KEY)")
            conn.executemany("INSERT OR IGNORE INTO seen VALUES (?)", ((i,) for i in ids))
            present = conn.execute(
                "SELECT count(*) FROM seen JOIN jobs ON jobs.id = seen.id"
            ).fetchone()[0]
            # Jobs of one batch share enqueued_at (read once per batch): distinct values among
            # this run's rows are a lower bound of the number of commits (fsyncs).
            commits = None
            if a.before_seq is not None:
                commits = conn.execute(
                    "SELECT count(DISTINCT enqueued_at) FROM jobs WHERE seq > ?", (a.before_seq,)
                ).fetchone()[0]
        finally:
            conn.close()
        rec.update(
            {
                "db_new_jobs": new_jobs,
                "ids_answered": len(ids),
                "ids_unique": len(set(ids)),
                "ids_in_db": present,
                "missing": len(set(ids)) - present,
                "commits_lb": commits,
            }
        )
        if len(ids) != ok:
            problems.append(f"{ok} answers 202 but {len(ids)} job ids recorded")
        if rec["missing"]:
            problems.append(f"{rec['missing']} job ids answered 202 are NOT in the queue DB")
        if len(set(ids)) != len(ids):
            problems.append("the same job id was answered twice")
        # Requests answered by Ferry after wrk stopped reading (at most one per connection).
        extra = new_jobs - ok
        rec["in_flight_at_stop"] = extra
        if extra < 0 or extra > a.conns:
            problems.append(
                f"queue gained {new_jobs} jobs for {ok} answers 202 "
                f"(difference {extra} outside [0, {a.conns}])"
            )
        if a.log:
            with open(a.log, errors="replace") as f:
                logged = sum(1 for line in f if "promotion queued" in line)
            rec["logged_queued"] = logged - a.log_before
    rec["valid"] = not problems
    print(json.dumps(rec))
    msg = (
        f"  {a.label}: {rec['rps']:.0f} req/s, p50 {rec['p50_ms']:.2f} ms, p99 {rec['p99_ms']:.2f} ms, "
        f"{ok} x 202"
    )
    if "cpu_us_per_req" in rec:
        msg += f", server CPU {rec['cpu_us_per_req']:.0f} µs/req ({rec['server_cores']:.2f} cores)"
    if "writer_us_per_req" in rec:
        msg += f", writer thread {rec['writer_us_per_req']:.0f} µs/req ({rec['writer_cores']:.2f} cores)"
    if "client_cores" in rec:
        msg += f", wrk {rec['client_cores']:.2f} cores, others {rec['other_cores']:.2f} cores"
        if rec.get("other_top"):
            msg += f" ({rec['other_top']})"
    if a.db:
        msg += (
            f", queue +{rec['db_new_jobs']} jobs, {rec['ids_in_db']}/{rec['ids_unique']} answered ids in DB"
        )
        if rec.get("commits_lb"):
            msg += f", >= {rec['commits_lb']} commits (~{rec['db_new_jobs'] / rec['commits_lb']:.1f} jobs/commit)"
    print(msg, file=sys.stderr)
    for p in problems:
        print(f"  INVALID: {p}", file=sys.stderr)
    for s in r["samples"]:
        print(f"  sample non-202 answer: {s}", file=sys.stderr)


def cmd_max_seq(a):
    conn = _connect(a.db)
    try:
        print(conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0])
    finally:
        conn.close()


# ---------------------------------------------------------------- report


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cmd_summarize(a):
    recs = load(a.results)
    bare = {r["conns"]: r for r in recs if r["target"] == "bare"}
    rows = []
    failures = []
    rows.append(
        "| conns | server | route | req/s | p50 ms | p99 ms | ferry/bare | server CPU µs/req (writer thread) | "
        "cores: server / wrk / other¹ | 202s | jobs in queue | 202 ids missing | valid | target |"
    )
    rows.append("|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|")
    for r in recs:
        peer = bare.get(r["conns"])
        ratio = r["rps"] / peer["rps"] if peer and r["target"] != "bare" and peer["rps"] else None
        if r["target"] == "bare":
            verdict = "peer"
        else:
            checks = []
            if ratio is None or ratio < TARGET_RATIO:
                checks.append(f"ratio < {TARGET_RATIO}")
            if r["p99_ms"] >= TARGET_P99_MS:
                checks.append(f"p99 ≥ {TARGET_P99_MS:g} ms")
            if not r["valid"] or r.get("missing", 1):
                checks.append("not all 202 durable/valid")
            if peer is None or not peer["valid"]:
                checks.append("peer run invalid")
            verdict = "PASS" if not checks else "FAIL (" + "; ".join(checks) + ")"
            if checks:
                failures.append(f"{r['label']}: {verdict}")
        rows.append(
            "| {c} | {srv} | {route} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {ratio} | {cpu} | {cores} | {ok:,} | {jobs} | {miss} | {valid} | {v} |".format(
                cores=(
                    f"{r['server_cores']:.2f} / {r['client_cores']:.2f} / {r['other_cores']:.2f}"
                    if "client_cores" in r
                    else "—"
                ),
                c=r["conns"],
                cpu=(f"{r['cpu_us_per_req']:.0f}" if "cpu_us_per_req" in r else "—")
                + (f" ({r['writer_us_per_req']:.0f})" if "writer_us_per_req" in r else ""),
                srv="bare axum" if r["target"] == "bare" else "ferry serve",
                route=r["route"] if "route" in r else r["label"],
                rps=r["rps"],
                p50=r["p50_ms"],
                p99=r["p99_ms"],
                ratio=f"{ratio:.2f}×" if ratio is not None else "—",
                ok=r["ok202"],
                jobs=f"+{r['db_new_jobs']:,}" if "db_new_jobs" in r else "—",
                miss=r.get("missing", "—"),
                valid="yes" if r["valid"] else "NO: " + "; ".join(r["problems"]),
                v=verdict,
            )
        )
    print("\n".join(rows))
    print()
    print(
        "¹ CPU cores used during the measured run, from /proc: the server process, wrk, and everything "
        "else (other processes, and kernel threads such as the disk I/O workers ferry's fsyncs wake). "
        "A row where \"other\" exceeds the limit (OTHER_MAX) is marked invalid: something else was running."
    )
    print()
    extra = [
        r for r in recs if r["target"] != "bare" and r.get("commits_lb")
    ]
    if extra:
        print(
            "Group commit (lower bound on commits = distinct `enqueued_at` ms among the run's rows): "
            + "; ".join(
                f"{r['label']} ≥ {r['commits_lb']:,} commits, ≈ {r['db_new_jobs'] / r['commits_lb']:.1f} jobs/commit"
                for r in extra
            )
            + "."
        )
        print()
    sigs = [r for r in recs if "sigs_before" in r]
    if sigs:
        print(
            "Generic rows started with "
            + ", ".join(f"{r['sigs_before']:,} ({r['label']})" for r in sigs)
            + " generic requests already accepted by that ferry process in the last minutes, i.e. "
            "signatures in its replay-protection map."
        )
        print()
    if failures:
        print(f"**Targets: FAIL** — " + "; ".join(failures))
    else:
        print(
            f"**Targets: PASS** — every Ferry row ≥ {TARGET_RATIO}× bare axum req/s at the same "
            f"concurrency, p99 < {TARGET_P99_MS:g} ms, every 202 answered has its job in the queue DB."
        )
    sys.exit(1 if failures else 0)


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def cmd_machine(a):
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    fs = _run(["df", "--output=source,fstype", a.dir]).splitlines()
    fs = " ".join(fs[-1].split()) if fs else "?"
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0
    print(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"- CPU: {model or platform.processor() or '?'}, nproc = {os.cpu_count()}, RAM {mem}")
    print(f"- Kernel: {platform.system()} {platform.release()} ({platform.machine()})")
    print(f"- Queue data_dir filesystem: {fs} (not tmpfs: fsync reaches the disk)")
    print(f"- Load average (1 min) before the run: {load1:.2f}")


def cmd_record(a):
    with open(a.section) as f:
        section = f.read().rstrip("\n") + "\n"
    try:
        with open(a.file) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    m = re.search(r"^## Intake[^\n]*\n", text, flags=re.M)
    if m:
        nxt = re.search(r"^## ", text[m.end():], flags=re.M)
        end = m.end() + nxt.start() if nxt else len(text)
        text = text[: m.start()] + section + ("\n" if nxt else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = a.file + ".intake.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, a.file)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pool")
    s.add_argument("--kind", choices=["generic", "acr"], required=True)
    s.add_argument("--secret-file", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--tag", default="run")
    s.set_defaults(f=cmd_pool)
    s = sub.add_parser("freeport")
    s.set_defaults(f=cmd_freeport)
    s = sub.add_parser("wait-http")
    s.add_argument("url")
    s.add_argument("timeout", nargs="?", type=float, default=20)
    s.set_defaults(f=cmd_wait_http)
    s = sub.add_parser("wait-quiet")
    s.add_argument("timeout", type=float)
    s.add_argument("threshold", nargs="?", type=float, default=90)
    s.set_defaults(f=cmd_wait_quiet)
    s = sub.add_parser("wait-port")
    s.add_argument("port", type=int)
    s.add_argument("timeout", nargs="?", type=float, default=20)
    s.set_defaults(f=cmd_wait_port)
    s = sub.add_parser("settle")
    s.add_argument("db")
    s.add_argument("timeout", nargs="?", type=float, default=10)
    s.set_defaults(f=cmd_settle)
    s = sub.add_parser("cpu")
    s.add_argument("pid", type=int)
    s.set_defaults(f=cmd_cpu)
    s = sub.add_parser("count")
    s.add_argument("db")
    s.set_defaults(f=cmd_count)
    s = sub.add_parser("count-sender")
    s.add_argument("db")
    s.add_argument("sender")
    s.set_defaults(f=cmd_count_sender)
    s = sub.add_parser("max-seq")
    s.add_argument("db")
    s.set_defaults(f=cmd_max_seq)
    s = sub.add_parser("fsync")
    s.add_argument("dir")
    s.add_argument("n", nargs="?", type=int, default=200)
    s.set_defaults(f=cmd_fsync)
    s = sub.add_parser("check")
    s.add_argument("--label", required=True)
    s.add_argument("--target", required=True, choices=["bare", "ferry"])
    s.add_argument("--route", required=True)
    s.add_argument("--conns", type=int, required=True)
    s.add_argument("--threads", type=int, required=True)
    s.add_argument("--wrk-out", required=True)
    s.add_argument("--db")
    s.add_argument("--before", type=int, default=0)
    s.add_argument("--before-seq", type=int)
    s.add_argument("--ids")
    s.add_argument("--log")
    s.add_argument("--log-before", type=int, default=0)
    s.add_argument("--sigs-before", type=int)
    s.add_argument("--client-cpu", type=float, help="CPU seconds wrk used")
    s.add_argument("--max-other-cores", type=float, default=0.35)
    s.add_argument("--cpu-before")
    s.add_argument("--cpu-after")
    s.set_defaults(f=cmd_check)
    s = sub.add_parser("summarize")
    s.add_argument("results")
    s.set_defaults(f=cmd_summarize)
    s = sub.add_parser("machine")
    s.add_argument("dir")
    s.set_defaults(f=cmd_machine)
    s = sub.add_parser("record")
    s.add_argument("file")
    s.add_argument("section")
    s.set_defaults(f=cmd_record)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
