#!/usr/bin/env python3
"""Observability cost: end-to-end relay throughput with the event log on and /metrics
scraped every second, against the event log off and no scraping (issue 5 target: under
3% cost).

The relay run is the shaping overhead benchmark's (benchmarks/shaping/overhead_bench.py:
a real nsd serving 1,000 domains with distinct MX hosts, four `smtp-sink -c` receivers,
mtad with fsync on, --messages 1 KB messages with one recipient each from a pipelining
injector), without shaping rules. The two cases differ only in:
- "on": `events.directory` set (one JSON line per reception and per delivery, written by
  the event log's thread into a rotating file in mtad's working directory) and a scraper
  thread fetching http://.../metrics every --scrape-interval seconds while the run lasts;
- "off": `events: {directory: ""}` and no scraping. Metric cells are still counted (they
  cannot be switched off: a few relaxed stores per message), only never read.
Each "on" run checks that the log has a line per reception and per delivery (from
mta_events_total) and that every scrape succeeded. The cases alternate, --runs each;
medians, ratios and mtad's CPU time per message are reported, and the section
"Observability cost" of benchmarks/RESULTS.md is replaced (unless --no-results).

usage: benchmarks/observability/observability_bench.py [--runs 5] [--messages 30000]
"""

import argparse
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "shaping"))

import common  # noqa: E402
import overhead_bench  # noqa: E402


def scraper(interval):
    """A `during` hook for overhead_bench.one_run: scrapes /metrics every `interval` s."""

    def start(m):
        url = f"http://127.0.0.1:{m.http_port}/metrics"
        stop = threading.Event()
        stats = {"scrapes": 0, "failed": 0, "bytes": 0}

        def loop():
            while not stop.wait(interval):
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        stats["bytes"] = len(r.read())
                    stats["scrapes"] += 1
                except OSError:
                    stats["failed"] += 1

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()

        def finish():
            stop.set()
            thread.join()
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
            events = re.search(r"^mta_events_total (\d+)", text, re.M)
            dropped = re.search(r"^mta_events_dropped_total (\d+)", text, re.M)
            return {**stats, "events": int(events.group(1)) if events else 0,
                    "dropped": int(dropped.group(1)) if dropped else 0}

        return finish

    return start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--shards", type=int, default=os.cpu_count())
    ap.add_argument("--scrape-interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--no-results", action="store_true", help="do not edit RESULTS.md")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for other test runs (bazel test, benchmarks) to end")
    args = ap.parse_args()
    command = common.command_line("observability_bench.py", "observability")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nofile = common.raise_nofile()
    binfo = common.snapshot_binaries()
    if not args.no_wait:
        common.wait_quiet()
    machine = common.machine_note()
    started = time.strftime("%Y-%m-%d %H:%M")
    nsd = common.start_nsd({"bench.test": overhead_bench.zone(args.domains, args.sinks)})
    res = {True: [], False: []}
    try:
        for run in range(args.runs):
            order = (False, True) if run % 2 == 0 else (True, False)
            for on in order:
                if not args.no_wait:
                    common.wait_quiet(limit=300)
                sections = {} if on else {"events": {"directory": ""}}
                during = scraper(args.scrape_interval) if on else None
                with common.OverlapWatch() as watch:
                    r = overhead_bench.one_run(args, nsd, sections, during)
                r["busy"] = watch.busy
                if on:
                    # A reception and a delivery line per message, none dropped.
                    if r["events"] < 2 * args.messages or r["dropped"] or r["failed"]:
                        raise RuntimeError(f"event log or scrapes incomplete: {r}")
                res[on].append(r)
                extra = (f"; {r['scrapes']} scrapes of {r['bytes']} bytes, {r['events']} events"
                         if on else "")
                print(f"run {run + 1} {'on ' if on else 'off'}: {r['rate']:6.0f} msg/s end to "
                      f"end ({r['secs']:.2f} s); mtad CPU {r['cpu_us']:.0f} µs/msg{extra}"
                      f"{'; OTHER TESTS RAN MEANWHILE' if r['busy'] else ''}", flush=True)
                for w in r["warnings"][:5]:
                    print("    " + w, flush=True)
    finally:
        nsd.stop()
        shutil.rmtree(nsd.dir, ignore_errors=True)

    med = {k: common.median([r["rate"] for r in v]) for k, v in res.items()}
    cpu = {k: common.median([r["cpu_us"] for r in v]) for k, v in res.items()}
    ratio = med[True] / med[False]
    cpu_ratio = cpu[True] / cpu[False]
    pair = [a["rate"] / b["rate"] for a, b in zip(res[True], res[False])]
    cpu_pair = [a["cpu_us"] / b["cpu_us"] for a, b in zip(res[True], res[False])]
    runs_txt = {k: ", ".join(f"{r['rate']:.0f}" for r in v) for k, v in res.items()}
    cpu_txt = {k: ", ".join(f"{r['cpu_us']:.0f}" for r in v) for k, v in res.items()}
    cost = (1 - ratio) * 100
    table = [
        "| case | end-to-end msg/s (median) | runs | mtad CPU µs/msg (median) | runs |",
        "|---|---:|---|---:|---|",
        f"| event log off, no scraping | {med[False]:.0f} | {runs_txt[False]} | "
        f"{cpu[False]:.0f} | {cpu_txt[False]} |",
        f"| event log on, /metrics every {args.scrape_interval:g} s | {med[True]:.0f} | "
        f"{runs_txt[True]} | {cpu[True]:.0f} | {cpu_txt[True]} |",
    ]
    busy = sum(r["busy"] for v in res.values() for r in v)
    summary = (f"Throughput on / off = {ratio:.3f} (cost {cost:+.1f}%; per pair "
               f"{', '.join(f'{x:.3f}' for x in pair)}); target under 3%: "
               f"{'met' if cost < 3 else 'NOT met'}. mtad CPU per message on / off = "
               f"{cpu_ratio:.3f} ({(cpu_ratio - 1) * 100:+.1f}%; per pair "
               f"{', '.join(f'{x:.3f}' for x in cpu_pair)}). {busy} of {2 * args.runs} runs "
               f"overlapped another test run on the machine")
    print("\n" + "\n".join(table))
    print(summary)
    if args.no_results:
        return
    body = f"""Command ({started}):

```sh
{command}
```

Machine: {machine}; {common.binary_note(binfo)}. RLIMIT_NOFILE {nofile[0]}.

Setup: the relay run of "Shaping overhead" below (real nsd, {args.domains} domains with
distinct MX hosts, {args.sinks} `smtp-sink -c`, mtad `--shards {args.shards}` with fsync
on, {args.messages} messages of {args.size // 1024} KB with one recipient each from
{args.sessions} pipelining sessions), no shaping rules. "On": the event log writes a
JSON line per reception and per delivery ({2 * args.messages} lines per run, checked
from `mta_events_total`, none dropped) and a client scrapes `/metrics` every
{args.scrape_interval:g} s throughout. "Off": `events.directory: ""` and no scraping
(metric cells are still counted, never read). Cases alternate, {args.runs} runs each.

{chr(10).join(table)}

{summary}.
"""
    common.replace_section("Observability cost: event log and scraping on vs off (issue 5)",
                           body)
    print(f"updated {common.RESULTS}")


if __name__ == "__main__":
    main()
