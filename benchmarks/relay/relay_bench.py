#!/usr/bin/env python3
"""Relay benchmark: smtp-source -> mtad -> smtp-sink versus smtp-source -> Postfix ->
smtp-sink, side by side, plus the loopback limit (smtp-source straight into smtp-sink).

Both relays run on this machine with fsync on (mtad: group-committed RocksDB WAL, and
per-recipient outcomes; Postfix: its queue files) and deliver everything to one
`smtp-sink` (Debian's postfix package) on loopback. The time of a run is from the first
connection of smtp-source until the sink has counted every message. Postfix keeps its
default delivery concurrency (20 per destination); mtad its default (10 per destination).

It also measures mtad's injection-to-delivery latency at a fixed rate (half of the
measured peak, capped by what the Python injector can pace): each message's 250 time at
the client against the time smtp-sink wrote it to disk.

usage: benchmarks/relay/relay_bench.py [--runs 3] [--quick]
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "intake"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402
from postfix_instance import MAIN_CF, PostfixInstance  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """smtp-sink counting messages (-c); optionally dumping each one to a file (-d)."""

    def __init__(self, dump_dir=None):
        self.port = free_port()
        args = ["smtp-sink", "-u", "nobody", "-c"]
        if dump_dir:
            args += ["-d", os.path.join(dump_dir, "%H%M%S.")]
        args += [f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.count = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.3)

    def _read(self):
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            buf = (buf + chunk)[-200:]
            m = re.findall(rb"mesg=(\d+)", buf)
            if m:
                self.count = int(m[-1])

    def wait_for(self, n, timeout=600):
        deadline = time.time() + timeout
        while self.count < n:
            if time.time() > deadline:
                raise RuntimeError(f"sink has {self.count} of {n}")
            time.sleep(0.005)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def smtp_source(port, sessions, size, rcpts, count):
    cmd = ["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-r", str(rcpts), "-f", "sender@bench.test", "-t", "rcpt@dest.test",
           f"127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {out.stderr.strip()}")
    return " ".join(cmd)


def timed_relay(inject_port, sink, sessions, size, rcpts, count):
    base = sink.count
    start = time.monotonic()
    cmd = smtp_source(inject_port, sessions, size, rcpts, count)
    sink.wait_for(base + count)
    return count / (time.monotonic() - start), cmd


def mtad_instance(sink_port, shards):
    return harness.Mtad(shards=shards, limits={"max_connections_per_ip": 10000},
                        delivery={"routes": [{"domain": "*", "host": "127.0.0.1",
                                              "port": sink_port, "tls": "none"}]})


def run_mtad(sink, sessions, size, rcpts, count, shards):
    m = mtad_instance(sink.port, shards).start()
    try:
        return timed_relay(m.port, sink, sessions, size, rcpts, count)
    finally:
        m.stop()
        shutil.rmtree(m.workdir, ignore_errors=True)


class PostfixRelay(PostfixInstance):
    def __init__(self, workdir, port, sink_port):
        super().__init__(workdir, port)
        self.sink_port = sink_port

    def start(self):
        import postfix_instance
        # Same private instance as the intake benchmark, but relaying to the sink.
        postfix_instance.MAIN_CF = MAIN_CF.replace(
            "smtpd_client_restrictions = check_client_access static:HOLD\n", "").replace(
            "relayhost =\n", f"relayhost = [127.0.0.1]:{self.sink_port}\n")
        try:
            return super().start()
        finally:
            postfix_instance.MAIN_CF = MAIN_CF


def latency_run(sink_dir, sink_port, rate, count, shards):
    """Injects `count` messages at `rate`/s over 32 connections (spread over the shards by
    SO_REUSEPORT); returns latencies in ms."""
    m = mtad_instance(sink_port, shards).start()
    acked = {}
    lock = threading.Lock()
    conns = 32
    per_thread = count // conns
    interval = conns / rate

    def worker(t):
        c = harness.RawSmtp(m.port)
        c.cmd("EHLO lat.test")
        next_at = time.monotonic()
        for i in range(per_thread):
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            mid = f"lat-{t}-{i}"
            c.send(b"MAIL FROM:<s@bench.test>\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n")
            for _ in range(3):
                c.reply()
            body = (f"Message-ID: <{mid}@bench.test>\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000"
                    f"\r\nSubject: {mid}\r\n\r\n").encode() + b"x" * 900 + b"\r\n.\r\n"
            c.send(body)
            code, _ = c.reply()
            if code == 250:
                with lock:
                    acked[mid] = time.time()
        c.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(conns)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    achieved = len(acked) / (time.monotonic() - start)
    deadline = time.time() + 60
    seen = {}
    while time.time() < deadline and len(seen) < len(acked):
        for name in os.listdir(sink_dir):
            path = os.path.join(sink_dir, name)
            if path in seen:
                continue
            with open(path, "rb") as f:
                mm = re.search(rb"Message-ID: <(lat-\d+-\d+)@", f.read())
            if mm:
                seen[path] = (mm.group(1).decode(), os.stat(path).st_mtime)
        time.sleep(0.2)
    m.stop()
    lat = sorted((mtime - acked[mid]) * 1000 for mid, mtime in seen.values() if mid in acked)
    return lat, achieved


def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shards", type=int, default=os.cpu_count())
    ap.add_argument("--mtad-messages", type=int, default=20000)
    ap.add_argument("--postfix-messages", type=int, default=3000)
    ap.add_argument("--latency-only", type=float, default=0,
                    help="skip throughput; measure latency at this rate (msg/s)")
    args = ap.parse_args()
    configs = [(size, 100, rcpts) for size in (1024, 10240) for rcpts in (1, 5)]
    if args.latency_only:
        configs = []
    if args.quick:
        configs, args.runs = [(1024, 100, 1)], 1
        args.mtad_messages, args.postfix_messages = 3000, 500

    sink = Sink()
    mt_cmd = ""
    pf = PostfixRelay(tempfile.mkdtemp(prefix="postfix-relay-"), free_port(), sink.port).start()
    rows = []
    peak = {}
    try:
        for size, sessions, rcpts in configs:
            lim = timed_relay(sink.port, sink, sessions, size, rcpts, args.mtad_messages)[0]
            mt, pfr = [], []
            for _ in range(args.runs):
                rate, mt_cmd = run_mtad(sink, sessions, size, rcpts, args.mtad_messages,
                                        args.shards)
                mt.append(rate)
                pf.clear_queue()
                rate, _ = timed_relay(pf.port, sink, sessions, size, rcpts,
                                      args.postfix_messages)
                pfr.append(rate)
            m, p = statistics.median(mt), statistics.median(pfr)
            peak[(size, rcpts)] = m
            rows.append((size, sessions, rcpts, m, p, lim))
            print(f"size={size} sessions={sessions} rcpts={rcpts}: mtad {m:.0f}/s "
                  f"(runs {', '.join(f'{x:.0f}' for x in mt)}), postfix {p:.0f}/s "
                  f"(runs {', '.join(f'{x:.0f}' for x in pfr)}), loopback limit {lim:.0f}/s",
                  flush=True)
    finally:
        pf.stop()
        sink.stop()

    print("\n| size | sessions | rcpts | mtad msg/s | Postfix msg/s | ratio | loopback limit | "
          "mtad / limit |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, sessions, rcpts, m, p, lim in rows:
        print(f"| {size // 1024} KB | {sessions} | {rcpts} | {m:.0f} | {p:.0f} | {m / p:.1f}x | "
              f"{lim:.0f} | {100 * m / lim:.0f}% |")

    time.sleep(5)  # let the Postfix instance finish shutting down before timing latency
    target = args.latency_only or peak.get((1024, 1), 2000) / 2
    n = 2000 if args.quick else 4000
    p99s = []
    for _ in range(args.runs):
        # tmpfs when available: the sink writes one file per message, and on a 2-core
        # machine a disk-backed dump makes the sink, not mtad, the bottleneck.
        dump = tempfile.mkdtemp(prefix="sink-dump-",
                                dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.chmod(dump, 0o777)
        lsink = Sink(dump_dir=dump)
        try:
            lat, achieved = latency_run(dump, lsink.port, target, n, args.shards)
        finally:
            lsink.stop()
            shutil.rmtree(dump, ignore_errors=True)
        # File times tick in kernel jiffies (about 4 ms), so a delivery can look a few ms
        # "earlier" than the client saw its 250: such values count as 0.
        lat = [max(0.0, x) for x in lat]
        p99s.append(pct(lat, 99))
        print(f"latency at {achieved:.0f} msg/s (target {target:.0f} = half of peak), "
              f"{len(lat)} messages: p50 {pct(lat, 50):.1f} ms, p90 {pct(lat, 90):.1f} ms, "
              f"p99 {pct(lat, 99):.1f} ms, max {lat[-1]:.1f} ms", flush=True)
    print(f"median p99 over {len(p99s)} runs: {statistics.median(p99s):.1f} ms")
    print(f"\nmedians of {args.runs} runs; mtad {args.mtad_messages} and Postfix "
          f"{args.postfix_messages} messages per run; mtad --shards {args.shards}")
    print(f"example command: {mt_cmd}")


if __name__ == "__main__":
    main()
