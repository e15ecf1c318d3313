#!/usr/bin/env python3
"""Transactional isolation under a marketing backlog (issue 4 target: the transactional
p99 injection-to-delivery latency with a 100,000-message marketing backlog draining is
within 2x of the figure without a backlog).

Setup, all on loopback: mtad (--shards 2, fresh spool per phase, fsync on) with streams
`transactional` (priority 10) and `marketing` (priority 0), a listener with
`stream: transactional, stream_header: X-Stream`, and `delivery.routes` sending the one
destination domain dest.test to one sink under `shaping.default.max_connections: 5`. The sink
(--sink) is fast_sink (benchmarks/shaping/fast_sink.cc, the default: bazel-bin's binary or
$FAST_SINK, copied to a private directory first like mtad) or capture_sink.py
(tests/integration); both run with --no-content, write the same records (on tmpfs) and are
followed the same way. capture_sink.py is Python and costs about 2 ms of CPU per
transaction, so on 2 cores it competes with mtad for CPU and inflates the latencies.

Cases (--cases):
- shared: both streams without a pool, so they compete for the same 5 connections from
  the same (kernel-chosen) source: the hard case, where only stream priority keeps
  transactional mail from queueing behind the backlog;
- separate: egress sources tx1 = 127.0.0.2 and bulk1 = 127.0.0.3, pools `tx` and `bulk`,
  one per stream: each source has its own 5 connections to the site;
- reserved: as shared, with `reserved_connections: 1`: marketing keeps at most 4 of the 5
  connections busy, the fifth waits (idle, connected) for transactional mail;
- control (not in the default set): as shared, but the marketing goes to another domain,
  bulk.test, routed to a second sink process. Transactional mail shares only
  mtad (and the machine's 2 cores) with the drain, not the receiver: the difference to
  `separate` is what the shared receiver costs.

Phases of one run of a case:
- A (no backlog): transactional messages at --rate/s (default 50) for --seconds (20),
  each to its own recipient tx-<n>@dest.test;
- B (backlog): mtad starts with `suspended: {streams: [marketing]}`; --backlog (100,000)
  marketing messages (1 KB, X-Stream: marketing) are injected as fast as smtp-source
  manages with 20 parallel sessions; the sink must have none. The configuration file is
  rewritten without the suspension and mtad gets SIGHUP (the live reload); once the sink
  has received --settle seconds' worth of marketing mail, transactional mail is injected
  exactly as in A while the backlog drains. With --full-drain (default) the run then
  waits for the whole backlog to arrive.

Latency of a transactional message: the sink's timestamp for it (taken when it has the
whole message, before its 250; with --reply-delay when its 250 goes out) minus the time
the injecting client read mtad's 250 (both time.time() on this machine). Injection: 4
client threads on persistent connections, each message MAIL + RCPT + `BDAT n LAST` + 1 KB
content in one write, paced by an absolute schedule. For B the run checks the backlog was still draining when the last
transactional message arrived, and reports how much of it the sink had not yet received
at that moment ("undelivered"). --runs (3) runs of each phase per case; medians are
reported, and the section "Transactional isolation" of benchmarks/RESULTS.md is replaced
(unless --no-results; a run with other --cases than the default writes its own section).

usage: benchmarks/shaping/isolation_bench.py [--runs 3] [--backlog 100000] [--seconds 20]
           [--rate 50] [--cases shared,reserved,separate] [--sink fast|python]
           [--reply-delay MS] [--lane-rate N]
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import harness  # noqa: E402

DEST = "dest.test"
BULK_DEST = "bulk.test"  # the control case's marketing destination
BUSY = "; OTHER TESTS RAN MEANWHILE"
DEFAULT_CASES = "shared,reserved,separate"
TX_SOURCE, BULK_SOURCE = "127.0.0.2", "127.0.0.3"
FAST_SINK_TARGET = "benchmarks/shaping/fast_sink"
FAST_SINK = None  # the private copy, once snapshot_fast_sink() has run


def snapshot_fast_sink():
    """Copies fast_sink ($FAST_SINK, else bazel-bin's) to a private directory (removed at
    exit), as common.snapshot_binaries() does for mtad, so a rebuild during the run cannot
    swap it. Returns a description for the results."""
    global FAST_SINK
    src = os.environ.get("FAST_SINK") or os.path.join(common.ROOT, "bazel-bin", FAST_SINK_TARGET)
    if not os.path.exists(src):
        raise SystemExit(f"{src} is missing: bazel build //{os.path.dirname(FAST_SINK_TARGET)}"
                         f":fast_sink (or set $FAST_SINK, or use --sink python)")
    d = tempfile.mkdtemp(prefix="fast-sink-bin-")
    atexit.register(shutil.rmtree, d, True)
    FAST_SINK = shutil.copy(src, os.path.join(d, "fast_sink"))
    with open(FAST_SINK, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    built = datetime.datetime.fromtimestamp(os.stat(src).st_mtime).strftime("%Y-%m-%d %H:%M")
    return f"fast_sink built {built} (sha256 {digest}…)"


class FastSink(common.CaptureSink):
    """fast_sink in place of capture_sink.py: the same command line, listening line and
    records, so CaptureSink's poll() and stop() follow it unchanged. __init__ is
    CaptureSink's with the other command (common.py is shared with overhead_bench.py)."""

    def __init__(self, address="127.0.0.1", on_message=None):
        self.dir = tempfile.mkdtemp(prefix="shaping-sink-", dir=common.SHM)
        self.out = os.path.join(self.dir, "records.jsonl")
        self.err_path = os.path.join(self.dir, "stderr")
        self.err = open(self.err_path, "w")
        self.on_message = on_message
        self.proc = subprocess.Popen(
            [FAST_SINK, "--listen", f"{address}:0", "--out", self.out, "--no-content",
             "--timeout", "600", "--reply-delay", str(ARGS.reply_delay)],
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise OSError("fast_sink failed: " + open(self.err_path).read())
        self.port = json.loads(line)["port"]
        self.address = address
        self.offset = 0
        self.partial = b""
        self.messages = 0


class Tracker:
    """Follows the sink's records: transactional arrival times by recipient, marketing
    arrival times in order, and every arrival per sink connection (conn_id)."""

    def __init__(self):
        self.tx = {}
        self.tx_conn = {}
        self.mk = []
        self.other = 0
        self.by_conn = {}  # (sink port, conn_id) -> [(timestamp, is_tx)] in arrival order

    def __call__(self, rec):
        rcpt = rec["rcpt_to"][0] if rec["rcpt_to"] else ""
        t = rec["timestamp"]
        conn = (rec["local_port"], rec["conn_id"])  # one tracker may follow several sinks
        if rcpt.startswith("tx-"):
            if rcpt not in self.tx:
                self.tx[rcpt] = t
                self.tx_conn[rcpt] = (conn, len(self.by_conn.get(conn, [])))
            self.by_conn.setdefault(conn, []).append((t, True))
        elif "mk@" in rcpt:  # smtp-source may prefix a number
            self.mk.append(t)
            self.by_conn.setdefault(conn, []).append((t, False))
        else:
            self.other += 1

    def decompose(self, acked):
        """For each delivered transactional message: how long it waited for the transaction
        its connection had in flight when it was acknowledged (the previous arrival on that
        sink connection, if later than the 250), and the rest (mtad handing it over plus
        its own transaction at the sink). Returns sorted lists in ms, and how many followed
        a marketing message on their connection."""
        waits, owns, after_mk = [], [], 0
        for rcpt, t_ack in acked.items():
            if rcpt not in self.tx:
                continue
            conn, pos = self.tx_conn[rcpt]
            prev = self.by_conn[conn][pos - 1] if pos > 0 else None
            t_prev = prev[0] if prev else t_ack
            if prev is not None and not prev[1]:
                after_mk += 1
            start = max(t_prev, t_ack)
            waits.append(max(0.0, (t_prev - t_ack) * 1000))
            owns.append(max(0.0, (self.tx[rcpt] - start) * 1000))
        return sorted(waits), sorted(owns), after_mk

    def mk_transaction_ms(self, t_from, t_to):
        """Median gap between consecutive marketing arrivals on one sink connection within
        [t_from, t_to]: the time one marketing transaction takes end to end."""
        gaps = []
        for arrivals in self.by_conn.values():
            prev = None
            for t, is_tx in arrivals:
                if t_from <= t <= t_to and prev is not None and not is_tx and not prev[1]:
                    gaps.append((t - prev[0]) * 1000)
                prev = (t, is_tx)
        return common.median(gaps)


class Sinks:
    """The sinks of a phase (--sink: fast_sink or capture_sink.py): [0] receives dest.test;
    in the control case [1] receives bulk.test (the marketing)."""

    def __init__(self, case, tracker):
        n = 2 if case == "control" else 1
        kind = FastSink if ARGS.sink == "fast" else common.CaptureSink
        self.all = [kind(on_message=tracker) for _ in range(n)]
        self.port = self.all[0].port

    def poll(self):
        for s in self.all:
            s.poll()

    def pids(self):
        return [s.proc.pid for s in self.all]

    def stop(self):
        for s in self.all:
            s.stop()


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def mtad_for(case, sinks, suspended):
    sections = {
        "streams": [{"name": "transactional", "priority": 10},
                    {"name": "marketing", "priority": 0}],
        "shaping": {"default": {"max_connections": 5}},
    }
    if ARGS.lane_rate:
        # Per source x destination: the drain's pace (and the machine's headroom).
        sections["shaping"]["default"]["max_message_rate"] = f"{ARGS.lane_rate}/s"
    if case == "reserved":
        sections["shaping"]["default"]["reserved_connections"] = 1
    if case == "separate":
        sections["egress"] = {
            "sources": [{"name": "tx1", "address": TX_SOURCE, "ehlo": "tx1.bench.test"},
                        {"name": "bulk1", "address": BULK_SOURCE, "ehlo": "bulk1.bench.test"}],
            "pools": [{"name": "tx", "sources": [{"source": "tx1"}]},
                      {"name": "bulk", "sources": [{"source": "bulk1"}]}]}
        sections["streams"][0]["pool"] = "tx"
        sections["streams"][1]["pool"] = "bulk"
    if suspended:
        sections["suspended"] = {"streams": ["marketing"]}
    return harness.Mtad(
        shards=ARGS.shards, limits={"max_connections_per_ip": 10000},
        spool={"max_bodies_in_memory": ARGS.max_bodies} if ARGS.max_bodies else None,
        listener={"stream": "transactional", "stream_header": "X-Stream"},
        delivery={"routes": [{"domain": d, "host": "127.0.0.1", "port": s.port, "tls": "none"}
                             for d, s in zip((DEST, BULK_DEST), sinks.all)]},
        sections=sections)


def inject_tx(port, rate, seconds, threads=4):
    """Paced transactional injection; returns {rcpt: 250 time}, refusals, the latest any
    message left its slot (s) and the (first, last) 250 times."""
    total = int(rate * seconds)
    acked, refused = {}, []
    late = [0.0]
    lock = threading.Lock()
    start = time.time() + 0.2

    def worker(t):
        c = harness.RawSmtp(port, timeout=60)
        c.cmd("EHLO tx.bench.test")
        for n in range(t, total, threads):
            slot = start + n / rate
            now = time.time()
            if now < slot:
                time.sleep(slot - now)
            else:
                with lock:
                    late[0] = max(late[0], now - slot)
            rcpt = f"tx-{n}@{DEST}"
            content = common.make_content(n, 1024, ["X-Stream: transactional",
                                                    f"To: <{rcpt}>"])
            c.send(b"MAIL FROM:<s@sender.bench>\r\nRCPT TO:<%s>\r\nBDAT %d LAST\r\n"
                   % (rcpt.encode(), len(content)) + content)
            codes = [c.reply()[0] for _ in range(3)]
            t_ack = time.time()
            with lock:
                if codes == [250, 250, 250]:
                    acked[rcpt] = t_ack
                else:
                    refused.append((rcpt, codes))
        c.cmd("QUIT")
        c.close()

    ws = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    times = sorted(acked.values())
    return acked, refused, late[0], (times[0], times[-1]) if times else (start, start)


def wait_until(cond, timeout, sink, step=0.2):
    deadline = time.time() + timeout
    while True:
        sink.poll()
        if cond():
            return True
        if time.time() > deadline:
            return False
        time.sleep(step)


def tx_phase(m, sink, tracker):
    hz = os.sysconf("SC_CLK_TCK")
    cpu0 = (time.time(), cpu_ticks(m.proc.pid), sum(cpu_ticks(p) for p in sink.pids()))
    acked, refused, late, (first_ack, last_ack) = inject_tx(m.port, ARGS.rate, ARGS.seconds)
    cpu1 = (time.time(), cpu_ticks(m.proc.pid), sum(cpu_ticks(p) for p in sink.pids()))
    ok = wait_until(lambda: all(r in tracker.tx for r in acked), 120, sink)
    missing = [r for r in acked if r not in tracker.tx]
    lat = sorted(max(0.0, (tracker.tx[r] - t) * 1000) for r, t in acked.items()
                 if r in tracker.tx)
    negative = sum(1 for r, t in acked.items() if r in tracker.tx and tracker.tx[r] < t)
    last_delivery = max((tracker.tx[r] for r in acked if r in tracker.tx), default=last_ack)
    waits, owns, after_mk = tracker.decompose(acked)
    # The five slowest, as (ms, seconds after the first 250): a stall shows as a cluster.
    slowest = sorted(((tracker.tx[r] - t) * 1000, t - first_ack) for r, t in acked.items()
                     if r in tracker.tx)[-5:]
    secs = cpu1[0] - cpu0[0]
    return {"sent": len(acked), "refused": len(refused), "missing": len(missing),
            "late": late, "lat": lat, "negative": negative, "first_ack": first_ack,
            "last_delivery": last_delivery, "complete": ok,
            "p50": common.pct(lat, 50), "p90": common.pct(lat, 90),
            "p99": common.pct(lat, 99), "max": lat[-1] if lat else float("nan"),
            "wait_p50": common.pct(waits, 50), "wait_p99": common.pct(waits, 99),
            "own_p50": common.pct(owns, 50), "own_p99": common.pct(owns, 99),
            "after_mk": after_mk, "slowest": slowest[::-1],
            "mk_txn_ms": tracker.mk_transaction_ms(first_ack, last_delivery),
            "mtad_cpu": 100 * (cpu1[1] - cpu0[1]) / hz / secs,
            "sink_cpu": 100 * (cpu1[2] - cpu0[2]) / hz / secs}


def log_problems(m):
    return common.notable_log_lines(m.log())


def phase_a(case):
    tracker = Tracker()
    sink = Sinks(case, tracker)
    m = mtad_for(case, sink, suspended=False)
    try:
        m.start(timeout=60)
        r = tx_phase(m, sink, tracker)
        r["warnings"] = log_problems(m)
        return r
    finally:
        m.stop()
        sink.stop()
        shutil.rmtree(m.workdir, ignore_errors=True)


def marketing_file(dest, size=1024):
    path = os.path.join(tempfile.mkdtemp(prefix="mk-", dir=common.SHM), "marketing.eml")
    lines = ["From: <news@sender.bench>", f"To: <mk@{dest}>", "Subject: marketing",
             "X-Stream: marketing", ""]
    while sum(len(l) + 2 for l in lines) + 78 <= size:
        lines.append("y" * 76)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def phase_b(case):
    tracker = Tracker()
    sink = Sinks(case, tracker)
    m = mtad_for(case, sink, suspended=True)
    mk_dest = BULK_DEST if case == "control" else DEST
    mk_file = marketing_file(mk_dest)
    r = {}
    try:
        m.start(timeout=60)
        # The backlog: smtp-source, 20 sessions, one connection each kept for all its mail.
        t0 = time.time()
        cmd = ["smtp-source", "-d", "-s", "20", "-m", str(ARGS.backlog), "-F", mk_file,
               "-f", "news@sender.bench", "-t", f"mk@{mk_dest}", f"127.0.0.1:{m.port}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {out.stderr.strip()}")
        r["intake_rate"] = ARGS.backlog / (time.time() - t0)
        time.sleep(1)
        sink.poll()
        if tracker.mk:
            raise RuntimeError(f"{len(tracker.mk)} marketing messages arrived while suspended")
        # The live reload: the same file without the suspension, then SIGHUP.
        del m.sections["suspended"]
        t_reload = time.time()
        m.reload()
        if not wait_until(lambda: tracker.mk and (tracker.mk[-1] - tracker.mk[0] >= ARGS.settle
                                                  or len(tracker.mk) >= ARGS.backlog),
                          60, sink):
            raise RuntimeError(f"marketing is not draining after the reload: "
                               f"{len(tracker.mk)} arrived in 60 s")
        r["first_mk_after_reload"] = tracker.mk[0] - t_reload
        tx = phase_result = tx_phase(m, sink, tracker)
        r.update(phase_result)
        sink.poll()
        by_last_tx = sum(1 for t in tracker.mk if t <= tx["last_delivery"])
        in_window = sum(1 for t in tracker.mk if tx["first_ack"] <= t <= tx["last_delivery"])
        last_second = sum(1 for t in tracker.mk
                          if tx["last_delivery"] - 1 <= t <= tx["last_delivery"])
        r["undelivered_at_last_tx"] = ARGS.backlog - by_last_tx
        r["still_draining"] = last_second > 0 and by_last_tx < ARGS.backlog
        r["drain_rate_tx_window"] = in_window / max(1e-9, tx["last_delivery"] - tx["first_ack"])
        if ARGS.full_drain:
            done = wait_until(lambda: len(tracker.mk) >= ARGS.backlog, ARGS.drain_timeout, sink,
                              step=0.5)
            r["drained"] = len(tracker.mk)
            r["drain_complete"] = done
            if tracker.mk:
                r["drain_rate_total"] = len(tracker.mk) / max(1e-9, tracker.mk[-1]
                                                              - tracker.mk[0])
        r["warnings"] = log_problems(m)
        return r
    finally:
        m.stop(timeout=60)
        sink.stop()
        shutil.rmtree(m.workdir, ignore_errors=True)
        shutil.rmtree(os.path.dirname(mk_file), ignore_errors=True)


def fmt_a(r):
    return (f"{r['sent']} tx (refused {r['refused']}, missing {r['missing']}, max lateness "
            f"{r['late'] * 1000:.0f} ms): p50 {r['p50']:.1f} ms, p90 {r['p90']:.1f} ms, "
            f"p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms [waiting for the connection's "
            f"transaction in flight p50/p99 {r['wait_p50']:.1f}/{r['wait_p99']:.1f} ms, the "
            f"rest {r['own_p50']:.1f}/{r['own_p99']:.1f} ms; {r['after_mk']} right after a "
            f"marketing message on their connection; CPU during tx: mtad {r['mtad_cpu']:.0f}%,"
            f" sink {r['sink_cpu']:.0f}%; slowest (ms @ s): "
            + ", ".join(f"{ms:.1f} @ {at:.2f}" for ms, at in r["slowest"]) + "]")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backlog", type=int, default=100000)
    ap.add_argument("--lane-rate", type=int, default=0,
                    help="shaping.default.max_message_rate per second (0 = none)")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--settle", type=float, default=2,
                    help="seconds of marketing arrivals before transactional injection")
    ap.add_argument("--cases", default=DEFAULT_CASES,
                    help="comma-separated: shared, reserved, separate, control")
    ap.add_argument("--shards", type=int, default=os.cpu_count())
    ap.add_argument("--max-bodies", type=int, default=0,
                    help="spool.max_bodies_in_memory for mtad (0: mtad's default, 10000)")
    ap.add_argument("--full-drain", action=argparse.BooleanOptionalAction, default=True,
                    help="after phase B's transactional mail, wait for the whole backlog")
    ap.add_argument("--drain-timeout", type=float, default=900)
    ap.add_argument("--sink", choices=("fast", "python"), default="fast",
                    help="the receiver: fast_sink (bazel-bin, or $FAST_SINK) or "
                         "tests/integration/capture_sink.py (Python; its CPU use on 2 cores "
                         "inflates the latencies)")
    ap.add_argument("--reply-delay", type=float, default=0,
                    help="milliseconds fast_sink takes to accept each message (its 250 after "
                         "the content; a timer, no CPU): a receiver that commits the message "
                         "before answering, as real MX hosts do (0: answer at once)")
    ap.add_argument("--no-results", action="store_true", help="do not edit RESULTS.md")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for other test runs (shaping_test, bazel test) to end")
    ARGS = ap.parse_args()
    if ARGS.reply_delay and ARGS.sink != "fast":
        ap.error("--reply-delay needs --sink fast")
    cases = [c for c in ARGS.cases.split(",") if c]
    command = common.command_line("isolation_bench.py")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    common.raise_nofile()
    binfo = common.snapshot_binaries()
    if ARGS.sink == "fast":
        sink_note = snapshot_fast_sink()
        sink_text = ("`fast_sink` (benchmarks/shaping/fast_sink.cc: C++, one epoll thread, "
                     "capture_sink.py's records written on tmpfs at least every 50 ms, "
                     "timestamp per message taken before its `250`)")
        if ARGS.reply_delay:
            sink_text += (f" that answers each message's content {ARGS.reply_delay:g} ms after "
                          f"it has all of it (`--reply-delay`: the session waits on a timer, "
                          f"then the record and its timestamp are made and the `250` is sent)")
    else:
        sink_note = "sink tests/integration/capture_sink.py"
        sink_text = ("`capture_sink.py --no-content` (Python asyncio, JSON lines on tmpfs, "
                     "timestamp per message)")
    if not ARGS.no_wait:
        common.wait_quiet()
    machine = common.machine_note()
    started = time.strftime("%Y-%m-%d %H:%M")

    results = {c: {"A": [], "B": []} for c in cases}
    for run in range(ARGS.runs):
        for case in cases:
            if not ARGS.no_wait:
                common.wait_quiet(limit=300)  # again before every run: others may have started
            with common.OverlapWatch() as watch:
                a = phase_a(case)
            a["busy"] = watch.busy
            results[case]["A"].append(a)
            print(f"run {run + 1} {case:8} A: {fmt_a(a)}; {len(a['warnings'])} notable mtad log lines"
                  f"{BUSY if a['busy'] else ''}", flush=True)
            if not ARGS.no_wait:
                common.wait_quiet(limit=300)
            with common.OverlapWatch() as watch:
                b = phase_b(case)
            b["busy"] = watch.busy
            results[case]["B"].append(b)
            drain = (f"; whole backlog at the sink: {b['drained']} in "
                     f"{'' if b['drain_complete'] else 'NOT '}time, overall "
                     f"{b.get('drain_rate_total', 0):.0f} msg/s") if ARGS.full_drain else ""
            print(f"run {run + 1} {case:8} B: {fmt_a(b)}; backlog intake "
                  f"{b['intake_rate']:.0f} msg/s, marketing transaction at the sink "
                  f"{b['mk_txn_ms']:.1f} ms (median per connection), first marketing delivery "
                  f"{b['first_mk_after_reload'] * 1000:.0f} ms after SIGHUP, drain during tx "
                  f"{b['drain_rate_tx_window']:.0f} msg/s, undelivered at last tx "
                  f"{b['undelivered_at_last_tx']} (still draining: {b['still_draining']})"
                  f"{drain}; {len(b['warnings'])} notable mtad log lines{BUSY if b['busy'] else ''}",
                  flush=True)
            for w in (a["warnings"] + b["warnings"])[:5]:
                print("    " + w, flush=True)

    rows = []
    summary = []
    for case in cases:
        A, B = results[case]["A"], results[case]["B"]
        med = lambda rs, k: common.median([r[k] for r in rs])  # noqa: E731
        ratio = med(B, "p99") / med(A, "p99")
        per_run = [b["p99"] / a["p99"] for a, b in zip(A, B)]
        for phase, rs in (("A: no backlog", A), ("B: backlog draining", B)):
            undeliv = (f"{med(rs, 'undelivered_at_last_tx'):.0f}"
                       if phase.startswith("B") else "–")
            drain = f"{med(rs, 'drain_rate_tx_window'):.0f}" if phase.startswith("B") else "–"
            mk_txn = f"{med(rs, 'mk_txn_ms'):.1f}" if phase.startswith("B") else "–"
            rows.append(f"| {case} | {phase} | {med(rs, 'sent'):.0f} | {med(rs, 'p50'):.1f} | "
                        f"{med(rs, 'p90'):.1f} | {med(rs, 'p99'):.1f} | {med(rs, 'max'):.1f} | "
                        f"{med(rs, 'wait_p50'):.1f} / {med(rs, 'wait_p99'):.1f} | "
                        f"{med(rs, 'own_p50'):.1f} / {med(rs, 'own_p99'):.1f} | "
                        f"{med(rs, 'mtad_cpu'):.0f}% / {med(rs, 'sink_cpu'):.0f}% | "
                        f"{undeliv} | {drain} | {mk_txn} |")
        verdict = "met" if ratio <= 2 else "NOT met"
        p99_a = ", ".join(f"{r['p99']:.1f}" for r in A)
        p99_b = ", ".join(f"{r['p99']:.1f}" for r in B)
        still = sum(1 for b in B if b["still_draining"])
        if still < len(B):
            verdict += (f" (but the backlog was drained before the end of the transactional"
                        f" phase in {len(B) - still} of {len(B)} runs: raise --backlog)")
        busy = sum(1 for r in A + B if r["busy"])
        summary.append(
            f"- **{case}**: p99 B / p99 A = {med(B, 'p99'):.1f} / {med(A, 'p99'):.1f} ms = "
            f"**{ratio:.2f}x** (per run: {', '.join(f'{x:.2f}' for x in per_run)}); target "
            f"≤ 2x: {verdict}. p99 per run, A: {p99_a} ms; B: {p99_b} ms. Backlog still draining at the "
            f"last transactional delivery in {still} of {len(B)} runs; backlog intake "
            f"{med(B, 'intake_rate'):.0f} msg/s (smtp-source, 20 sessions)"
            + (f"; whole backlog drained at {med(B, 'drain_rate_total'):.0f} msg/s overall"
               if ARGS.full_drain else "")
            + f"; {busy} of {len(A) + len(B)} phases overlapped another test run on the "
              f"machine.")
    table = ["| case | phase | tx msgs | p50 ms | p90 ms | p99 ms | max ms | "
             "wait for in-flight p50 / p99 ms | rest p50 / p99 ms | CPU mtad / sink | "
             "marketing undelivered at last tx | marketing drain msg/s | marketing txn ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"] + rows
    print("\n" + "\n".join(table))
    print("\n".join(summary))

    if ARGS.no_results:
        return
    body = f"""Command ({started}, one run of everything):

```sh
{command}
```

Machine: {machine}; {common.binary_note(binfo)}; {sink_note}.

Setup: mtad `--shards {ARGS.shards}` (fsync on, fresh spool per phase), streams
`transactional` (priority 10) and `marketing` (priority 0), listener `stream:
transactional, stream_header: X-Stream`, `delivery.routes: [{{domain: {DEST}, host:
127.0.0.1, port: SINK, tls: none}}]`, `shaping.default.max_connections: 5`. One
{sink_text} receives everything. Case **shared**: no pools, both streams compete for the
same 5 connections (only stream priority separates them). Case **reserved**: as shared, with
`reserved_connections: 1` (marketing keeps at most 4 of the 5 connections busy; the fifth
waits, connected, for transactional mail). Case **separate**: pools `tx`
(source 127.0.0.2) and `bulk` (127.0.0.3), one per stream, 5 connections each. Case
**control**: as shared, but the marketing is for another domain, `bulk.test`, routed to
a second sink process: transactional mail shares mtad and the 2 cores with the
drain, not the receiver.

- **A, no backlog**: {ARGS.rate:.0f} transactional msg/s for {ARGS.seconds:.0f} s
  (1 KB, unique recipients tx-<n>@{DEST}, 4 paced client connections, MAIL + RCPT +
  `BDAT n LAST` + content per write).
- **B, backlog**: mtad starts with `suspended: {{streams: [marketing]}}`;
  {ARGS.backlog:,} marketing messages (1 KB, `X-Stream: marketing`) go in through
  `smtp-source -d -s 20 -F FILE`; the sink must receive none. The configuration file is
  rewritten without the suspension and mtad gets SIGHUP; after {ARGS.settle:.0f} s of
  marketing arrivals at the sink, the same transactional load as A runs while the
  backlog drains.

Latency: the sink's timestamp for a message minus the time the client read mtad's `250`
for it. Medians of {ARGS.runs} runs per phase (phases A and B alternate):

{chr(10).join(table)}

{chr(10).join(summary)}

Columns: "wait for in-flight" splits each transactional latency at the arrival, on the
same sink connection, of the message before it: the part until then is the wait for the
transaction that connection had in flight when the `250` was given (0 when the
connection was idle); "rest" is the remainder (mtad handing the message to the
connection, plus its own transaction at the sink). "CPU": shares of one core used by
mtad and by the sink during the transactional injection. "Undelivered at last tx":
marketing messages the sink had not yet received when the last transactional message
arrived (from the sink's own records), i.e. the backlog was still draining for the whole
transactional phase. "Marketing drain": marketing arrivals per second at the sink during
the transactional phase. "Marketing txn": median gap between consecutive marketing
messages on one sink connection during that phase (one marketing transaction, end to
end).
"""
    title = "Transactional isolation under a marketing backlog (issue 4)"
    if cases != DEFAULT_CASES.split(","):
        title += f": cases {', '.join(cases)}"
    if ARGS.reply_delay:
        title += f", receiver answering in {ARGS.reply_delay:g} ms"
    common.replace_section(title, body)
    print(f"updated {common.RESULTS}")


ARGS = None

if __name__ == "__main__":
    main()
