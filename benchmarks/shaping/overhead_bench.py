#!/usr/bin/env python3
"""Shaping overhead: end-to-end relay throughput to 1,000 active destinations, each with
its own shaping rule, against the same 1,000 destinations with no rules (issue 4 target:
the rules cost under 10%).

Setup, all on loopback:
- a real nsd (tests/integration/dns_server.py) serves bench.test, where d<i>.bench.test has
  `MX 10 mx<i>.bench.test` and mx<i>.bench.test `A 127.0.0.<11 + i mod sinks>`, for
  i < --domains (nsd's response rate limiting is switched off: see common.py). A site
  is keyed by its MX host set, so there are --domains distinct sites, each with its own
  connections and queue, in both cases;
- --sinks (4) Postfix `smtp-sink -c` (counting only, nothing written) on 127.0.0.11 and
  up, one port, receive all mail; mx<i> has the address of sink i mod --sinks. mtad has
  `delivery.smtp_port` = that port, `delivery.dns_servers` = the nsd and `tls: none`.
  Several sinks because mtad opens up to 10 connections per site at once: 1,000 sites
  overflow one listen queue (4,096 here; the kernel drops the SYNs, and the client's
  retransmissions after 1, 3 and 7 s stretched single-sink runs from ~7 s to ~15 s at
  random). The kernel's ListenOverflows count is reported per run (it should be 0);
- mtad --shards 2 (fsync on for intake and every recorded outcome), fresh spool per run,
  `limits.max_connections_per_ip: 10000`. The "rules" case adds one rule per domain,
  `{name: r<i>, domain: d<i>.bench.test, max_connections: 10, max_message_rate: 100000/s}`:
  limits that never bind (10 is also the default connection cap), so only the bookkeeping
  is measured: rule look-up, a budget and a token bucket per site, refills and takes on
  every message. The "no rules" case has only shaping.default (10 connections, no rate).

Load: --messages 1 KB messages, one recipient each (u<n>@d<n % domains>.bench.test, so
the domains take turns), from --sessions parallel sessions in 2 processes (raw sockets,
MAIL + RCPT + `BDAT n LAST` + content in one write, 4 transactions pipelined per write;
this injector alone reaches about 17,000 msg/s into mtad with delivery off, so it is
never the bottleneck). A run's time is from the release of the injector until the sinks
have counted every message. The two cases alternate, --runs times each; medians and the
ratio are reported, and the section "Shaping overhead" of benchmarks/RESULTS.md is
replaced (unless --no-results).

RLIMIT_NOFILE is raised to its hard limit before anything is started (a site may hold up
to 10 connections; 1,000 sites at once).

usage: benchmarks/shaping/overhead_bench.py [--runs 5] [--messages 30000] [--domains 1000]
"""

import argparse
import os
import shutil
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import harness  # noqa: E402


def zone(domains, sinks=1, first=11):
    lines = []
    for i in range(domains):
        lines.append(f"d{i} IN MX 10 mx{i}.bench.test.")
        lines.append(f"mx{i} IN A 127.0.0.{first + i % sinks}")
    return "\n".join(lines) + "\n"


def rules(domains):
    return [{"name": f"r{i}", "domain": f"d{i}.bench.test", "max_connections": 10,
             "max_message_rate": "100000/s"} for i in range(domains)]


def mtad_cpu_seconds(pid):
    """User + system CPU time mtad has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(args, nsd, sections, during=None):
    """One relay run of args.messages to args.domains sites. `sections`: extra mtad config;
    `during(mtad)`, if given, is started once mtad runs and returns a function that stops it
    (called when the sinks have every message) and returns a dict added to the result."""
    # A fresh port per run: no TIME_WAIT collisions with the previous run's connections.
    sink = common.SinkGroup(args.sinks)
    overflows = common.listen_overflows()
    stop_during = None
    m = harness.Mtad(shards=args.shards, limits={"max_connections_per_ip": 10000},
                     delivery={"smtp_port": sink.port, "dns_servers": [nsd.address()],
                               "tls": "none"},
                     sections=sections)
    try:
        m.start(timeout=60)
        if during is not None:
            stop_during = during(m)
        rcpts = [f"u{n}@d{n % args.domains}.bench.test" for n in range(args.messages)]
        inj = common.Injector(m.port, rcpts, size=args.size, sessions=args.sessions,
                              processes=2, batch=4).prepare()
        n = args.messages
        done = {}

        def follow():  # the sinks' progress, while the injection is still going on
            try:
                done["t1"], done["marks"] = sink.wait_for(
                    n, timeout=args.timeout, marks=(n // 2, n * 9 // 10, n * 99 // 100))
            except RuntimeError as e:
                done["error"] = e

        follower = threading.Thread(target=follow, daemon=True)
        t0 = inj.go()
        follower.start()
        ok, bad, first_bad, injected_at = inj.wait()
        if bad or ok != args.messages:
            raise RuntimeError(f"injection: {ok} accepted, {bad} refused ({first_bad})")
        follower.join()
        if "error" in done:
            raise done["error"]
        t1, marks = done["t1"], done["marks"]
        cpu = mtad_cpu_seconds(m.proc.pid)
        extra = {}
        if stop_during is not None:
            extra = stop_during() or {}
            stop_during = None
        log = m.log()
    except Exception:
        bad = common.notable_log_lines(m.log())
        print(f"run failed; sink counted {sink.count}; mtad notable log lines ({len(bad)}):",
              flush=True)
        for line in bad[:10]:
            print("    " + line, flush=True)
        raise
    finally:
        if stop_during is not None:
            stop_during()
        m.stop()
        sink.stop()
        shutil.rmtree(m.workdir, ignore_errors=True)
    warnings = common.notable_log_lines(log)
    return {"rate": args.messages / (t1 - t0), "intake": args.messages / (injected_at - t0),
            "secs": t1 - t0, "warnings": warnings, "injected_s": injected_at - t0,
            "marks": {k: v - t0 for k, v in marks.items()},
            "overflows": common.listen_overflows() - overflows,
            "cpu_us": cpu * 1e6 / args.messages, **extra}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--sinks", type=int, default=4,
                    help="smtp-sinks on 127.0.0.11 and up; the MX hosts spread over them")
    ap.add_argument("--shards", type=int, default=os.cpu_count())
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds a run may take before it counts as failed")
    ap.add_argument("--no-results", action="store_true", help="do not edit RESULTS.md")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for other test runs (shaping_test, bazel test) to end")
    args = ap.parse_args()
    command = common.command_line("overhead_bench.py")

    # SIGTERM unwinds like Ctrl-C, so nsd, the sink and mtad are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nofile = common.raise_nofile()
    binfo = common.snapshot_binaries()
    if not args.no_wait:
        common.wait_quiet()
    machine = common.machine_note()
    started = time.strftime("%Y-%m-%d %H:%M")
    nsd = common.start_nsd({"bench.test": zone(args.domains, args.sinks)})
    res = {True: [], False: []}
    try:
        for run in range(args.runs):
            # Alternate which case goes first, so a drift in machine load hits both alike.
            order = (False, True) if run % 2 == 0 else (True, False)
            for with_rules in order:
                if not args.no_wait:
                    common.wait_quiet(limit=300)  # again before every run: others may have started
                with common.OverlapWatch() as watch:
                    sections = {"shaping": {"rules": rules(args.domains)}} if with_rules else {}
                    r = one_run(args, nsd, sections)
                r["busy"] = watch.busy
                res[with_rules].append(r)
                print(f"run {run + 1} {'rules   ' if with_rules else 'no rules'}: "
                      f"{r['rate']:6.0f} msg/s end to end ({r['secs']:.2f} s), intake "
                      f"{r['intake']:6.0f} msg/s; mtad CPU {r['cpu_us']:.0f} µs/msg; "
                      f"listen queue overflows {r['overflows']}; "
                      f"sink at 50/90/99%: "
                      f"{'/'.join(f'{v:.1f}' for _, v in sorted(r['marks'].items()))} s; "
                      f"{len(r['warnings'])} notable mtad log lines"
                      f"{'; OTHER TESTS RAN MEANWHILE' if r['busy'] else ''}", flush=True)
                for w in r["warnings"][:5]:
                    print("    " + w, flush=True)
    finally:
        nsd.stop()
        shutil.rmtree(nsd.dir, ignore_errors=True)

    med = {k: common.median([r["rate"] for r in v]) for k, v in res.items()}
    cpu = {k: common.median([r["cpu_us"] for r in v]) for k, v in res.items()}
    cpu_ratio = cpu[True] / cpu[False]
    cpu_pair = [a["cpu_us"] / b["cpu_us"] for a, b in zip(res[True], res[False])]
    cpu_txt = {k: ", ".join(f"{r['cpu_us']:.0f}" for r in v) for k, v in res.items()}
    intake = {k: common.median([r["intake"] for r in v]) for k, v in res.items()}
    ratio = med[True] / med[False]
    pair = [a["rate"] / b["rate"] for a, b in zip(res[True], res[False])]
    cost = (1 - ratio) * 100
    runs_txt = {k: ", ".join(f"{r['rate']:.0f}" for r in v) for k, v in res.items()}
    table = [
        "| case | end-to-end msg/s (median) | runs | intake done at (msg/s) | "
        "mtad CPU µs/msg (median) | runs |",
        "|---|---:|---|---:|---:|---|",
        f"| {args.domains} domains, no rules | {med[False]:.0f} | {runs_txt[False]} | "
        f"{intake[False]:.0f} | {cpu[False]:.0f} | {cpu_txt[False]} |",
        f"| {args.domains} domains, {args.domains} rules | {med[True]:.0f} | {runs_txt[True]} | "
        f"{intake[True]:.0f} | {cpu[True]:.0f} | {cpu_txt[True]} |",
    ]
    verdict = "met" if cost < 10 else "NOT met"
    busy = sum(r["busy"] for v in res.values() for r in v)
    summary = (f"Throughput rules / no rules = {ratio:.3f} (cost {cost:+.1f}%; per-pair ratios "
               f"{', '.join(f'{x:.3f}' for x in pair)}); target under 10%: {verdict}. "
               f"mtad CPU time per message, rules / no rules = {cpu_ratio:.3f} (cost "
               f"{(cpu_ratio - 1) * 100:+.1f}%; per pair "
               f"{', '.join(f'{x:.3f}' for x in cpu_pair)}). "
               f"{busy} of {2 * args.runs} runs overlapped another test run on the machine")
    print("\n" + "\n".join(table))
    print(summary)

    if args.no_results:
        return
    overflows = sum(r["overflows"] for v in res.values() for r in v)
    body = f"""Command ({started}, one run of everything):

```sh
{command}
```

Machine: {machine}; {common.binary_note(binfo)}. RLIMIT_NOFILE {nofile[0]}.

Setup: a real `nsd` (response rate limiting off) serves `bench.test`, where
`d<i>.bench.test` has `MX 10 mx<i>.bench.test` and `mx<i>` has `A 127.0.0.<11 + i mod
{args.sinks}>`, i < {args.domains}: {args.domains} distinct sites (a site is keyed by its
MX host set). mtad `--shards {args.shards}`, fresh spool per run, `delivery: {{smtp_port:
SINK, dns_servers: [NSD], tls: none}}`, fsync on. {args.sinks} `smtp-sink -c` (counting
only) on 127.0.0.11 and up, one port, receive everything: mtad opens up to 10
connections per site at once, and a single sink's listen queue (4,096) overflowed with
1,000 sites; the dropped SYNs, retransmitted after 1, 3 and 7 s, stretched runs from
about 7 s to about 15 s at random. The kernel's ListenOverflows counter grew by
{overflows} over these runs. The rules case adds {args.domains} rules `{{name: r<i>,
domain: d<i>.bench.test, max_connections: 10, max_message_rate: 100000/s}}`: limits that
never bind, so only the bookkeeping (rule look-up, a budget and a token bucket per site,
a take per message) is measured; the no-rules case has `shaping.default` only (10
connections, no rate limit).

Load: {args.messages} messages of {args.size // 1024} KB, one recipient each, the
{args.domains} domains taking turns (`u<n>@d<n mod {args.domains}>.bench.test`), from
{args.sessions} sessions in 2 Python processes sending MAIL, RCPT and `BDAT n LAST` with
the content in one write, 4 transactions pipelined per write (this injector reaches about
17,000 msg/s into mtad with delivery off). Time: from releasing the injector until the
sinks have counted every message. The cases alternate (order swapped every run),
{args.runs} runs each.

{chr(10).join(table)}

{summary}.

"mtad CPU": user + system time of the mtad process (all threads) from start until the
sinks had every message, per message: less sensitive than wall-clock throughput to what
else the shared machine runs. "Intake done at": the rate at which mtad had acknowledged
every message. Close to the
end-to-end rate, it means delivery kept pace with intake: both run on mtad's two shards,
which share the 2 cores with the injector and the sinks, so the figure is the whole
relay's (intake with fsync, {args.domains} MX look-ups and sites, connections, fsynced
outcomes), the shaping bookkeeping included.
"""
    common.replace_section("Shaping overhead: 1,000 destinations with and without rules "
                           "(issue 4)", body)
    print(f"updated {common.RESULTS}")


if __name__ == "__main__":
    main()
