#!/usr/bin/env python3
"""Intake benchmark: smtp-source -> mtad versus smtp-source -> Postfix, side by side.

Both receivers run on this machine with fsync on (mtad: group-committed RocksDB WAL;
Postfix: cleanup's fsync of each queue file) and delivery off (mtad has no delivery yet;
Postfix puts every message on hold). smtp-source (from Debian's postfix package) keeps
each of its N sessions open (-d) and sends messages back to back. For every configuration
both systems run alternately, several times; the table reports medians and their ratio.

usage: benchmarks/intake/intake_bench.py [--runs 3] [--quick]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from postfix_instance import PostfixInstance  # noqa: E402
import harness  # noqa: E402


def smtp_source(port, sessions, size, rcpts, count):
    cmd = ["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-r", str(rcpts), "-f", "sender@bench.test", "-t", "rcpt@dest.test",
           f"127.0.0.1:{port}"]
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {out.stderr.strip()}")
    return elapsed, " ".join(cmd)


def run_mtad(sessions, size, rcpts, count, shards):
    m = harness.Mtad(shards=shards, limits={"max_connections_per_ip": 10000,
                                             "max_recipients": 1000})
    m.start()
    try:
        elapsed, cmd = smtp_source(m.port, sessions, size, rcpts, count)
    finally:
        m.stop()
    stored = len(m.dump())
    shutil.rmtree(m.workdir, ignore_errors=True)
    if stored != count:
        raise RuntimeError(f"mtad stored {stored} of {count}")
    return count / elapsed, cmd


def run_postfix(pf, sessions, size, rcpts, count):
    pf.clear_queue()
    elapsed, cmd = smtp_source(pf.port, sessions, size, rcpts, count)
    deadline = time.time() + 30
    while pf.held_messages() < count and time.time() < deadline:
        time.sleep(0.1)
    held = pf.held_messages()
    if held != count:
        raise RuntimeError(f"postfix held {held} of {count}")
    return count / elapsed, cmd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one small configuration, one run")
    ap.add_argument("--shards", type=int, default=os.cpu_count())
    ap.add_argument("--mtad-messages", type=int, default=20000)
    ap.add_argument("--postfix-messages", type=int, default=3000)
    args = ap.parse_args()
    configs = [(size, sessions, rcpts) for size in (1024, 10240) for sessions in (10, 100)
               for rcpts in (1, 5)]
    if args.quick:
        configs, args.runs = [(1024, 10, 1)], 1
        args.mtad_messages, args.postfix_messages = 2000, 500

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        pf_port = s.getsockname()[1]
    pf = PostfixInstance(tempfile.mkdtemp(prefix="postfix-bench-"), pf_port).start()
    rows = []
    try:
        for size, sessions, rcpts in configs:
            mt, pfr = [], []
            for _ in range(args.runs):
                rate, mt_cmd = run_mtad(sessions, size, rcpts, args.mtad_messages, args.shards)
                mt.append(rate)
                rate, pf_cmd = run_postfix(pf, sessions, size, rcpts, args.postfix_messages)
                pfr.append(rate)
            m, p = statistics.median(mt), statistics.median(pfr)
            rows.append((size, sessions, rcpts, m, p, m / p))
            print(f"size={size} sessions={sessions} rcpts={rcpts}: mtad {m:.0f} msg/s "
                  f"(runs {', '.join(f'{x:.0f}' for x in mt)}), postfix {p:.0f} msg/s "
                  f"(runs {', '.join(f'{x:.0f}' for x in pfr)}), ratio {m / p:.1f}x", flush=True)
    finally:
        pf.stop()
        shutil.rmtree(pf.workdir, ignore_errors=True)

    print()
    print(f"| size | sessions | rcpts | mtad msg/s | Postfix msg/s | ratio |")
    print(f"|---:|---:|---:|---:|---:|---:|")
    for size, sessions, rcpts, m, p, r in rows:
        print(f"| {size // 1024} KB | {sessions} | {rcpts} | {m:.0f} | {p:.0f} | {r:.1f}x |")
    print(f"\nmedians of {args.runs} runs; mtad {args.mtad_messages} and Postfix "
          f"{args.postfix_messages} messages per run; mtad --shards {args.shards}")
    print(f"example command: {mt_cmd}")


if __name__ == "__main__":
    main()
