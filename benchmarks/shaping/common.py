"""Helpers shared by the shaping benchmarks (isolation_bench.py, overhead_bench.py).

- a snapshot of the mtad binary (the working tree may be rebuilt while a benchmark runs),
- a capture_sink.py wrapper that follows its JSON lines as they are written,
- a fast SMTP injector (raw sockets, CHUNKING: MAIL, RCPT and `BDAT n LAST` with the
  content go out in one write, several transactions pipelined per write), in worker
  processes so that Python's GIL does not become the bottleneck,
- percentiles, the machine note and the RESULTS.md section writer.
"""

import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "intake"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "relay"))

import harness  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
CAPTURE_SINK = os.path.join(ROOT, "tests", "integration", "capture_sink.py")
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit, inherited by mtad and the sinks we spawn."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def snapshot_binaries():
    """Copies mtad (and spool_dump) to a private directory (removed at exit) and points
    harness at the copy, so a rebuild of bazel-bin during the benchmark cannot swap the
    binary between runs. The binaries are harness's: $MTAD and $SPOOL_DUMP if set, else
    bazel-bin. Returns a description for the results: sha256 prefix, build time, and the
    git commit and uncommitted C++ changes of this tree when the binary comes from its
    bazel-bin ($MTAD_DESCRIPTION, if set, describes a binary from elsewhere)."""
    import atexit
    mtad, dump = harness.binaries()
    d = tempfile.mkdtemp(prefix="mtad-bin-")
    atexit.register(shutil.rmtree, d, True)
    harness.MTAD = shutil.copy(mtad, os.path.join(d, "mtad"))
    harness.SPOOL_DUMP = shutil.copy(dump, os.path.join(d, "spool_dump"))
    with open(harness.MTAD, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    built = datetime.datetime.fromtimestamp(os.stat(mtad).st_mtime).strftime("%Y-%m-%d %H:%M")
    info = {"source": mtad, "sha256": digest, "built": built, "commit": None, "dirty": [],
            "description": os.environ.get("MTAD_DESCRIPTION", "")}
    if os.path.realpath(mtad).startswith(os.path.realpath(os.path.join(ROOT, "bazel-bin"))) \
            or mtad.startswith(os.path.join(ROOT, "bazel-bin")):
        try:
            info["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()
            lines = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "mta",
                                    "queue", "dns", "auth", "metrics"],
                                   capture_output=True, text=True).stdout.split("\n")
            info["dirty"] = sorted({l[3:] for l in lines if l.strip()})
        except OSError:
            pass
    return info


def command_line(script, directory="shaping"):
    """The command that reproduces this run, with the binaries' environment if set."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("MTAD", "SPOOL_DUMP") if k in os.environ)
    return ((env + " " if env else "") + f"python3 benchmarks/{directory}/{script} " +
            " ".join(sys.argv[1:])).rstrip()


def binary_note(info):
    note = f"mtad binary built {info['built']} (sha256 {info['sha256']}…)"
    if info["description"]:
        note += ", " + info["description"]
    if info["commit"]:
        note += f", from this tree's bazel-bin at commit {info['commit']}"
    if info["dirty"]:
        note += "; uncommitted C++ changes in the tree at the time: " + ", ".join(info["dirty"])
    return note


def machine_note():
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"load average {load[0]:.2f} at start")


def pct(values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def median(values):
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def reflow(body, width=90):
    """Re-wraps the prose paragraphs and list items of a Markdown body to `width`
    columns; tables, code blocks and headings are left alone."""
    import textwrap
    out = []
    for block in body.strip("\n").split("\n\n"):
        if block.lstrip().startswith(("```", "|", "#")):
            out.append(block)
            continue
        items = []  # [is_list_item, words...]
        for line in block.split("\n"):
            if line.startswith("- "):
                items.append([True, line[2:].strip()])
            elif items:
                items[-1].append(line.strip())
            else:
                items.append([False, line.strip()])
        lines = []
        for is_list, *parts in items:
            text = " ".join(p for p in parts if p)
            if is_list:
                lines += textwrap.wrap(text, width, initial_indent="- ",
                                       subsequent_indent="  ", break_on_hyphens=False,
                                       break_long_words=False)
            else:
                lines += textwrap.wrap(text, width, break_on_hyphens=False,
                                       break_long_words=False)
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def replace_section(title, body):
    """Replaces the `## title` section of RESULTS.md (up to the next `## ` heading) with
    `body` (re-wrapped), or appends it."""
    with open(RESULTS) as f:
        text = f.read()
    heading = f"## {title}\n"
    section = heading + "\n" + reflow(body)
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    with open(RESULTS, "w") as f:
        f.write(text)


BUSY_PATTERN = "shaping_test|bazel test"


def others_busy(pattern=BUSY_PATTERN):
    """Pids of what would skew the figures: someone's test run (`pattern`), or an mtad
    this process did not start (another benchmark or test on the shared machine)."""
    def pgrep(pat):
        out = subprocess.run(["pgrep", "-f", pat], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if int(p) != os.getpid()]

    pids = pgrep(pattern)
    for pid in pgrep("mtad --config"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid != os.getpid():
            pids.append(pid)
    return pids


def wait_quiet(pattern=BUSY_PATTERN, interval=30, limit=900):
    """Waits (up to `limit` s) until others_busy() is empty (someone else's test run or
    benchmark would skew the figures). Returns True if it was quiet (at once or after
    waiting)."""
    deadline = time.time() + limit
    while True:
        pids = others_busy(pattern)
        if not pids:
            return True
        if time.time() > deadline:
            print(f"still busy after {limit} s: going ahead", flush=True)
            return False
        print(f"waiting for other processes to finish ({pattern}, or an mtad not ours: "
              f"{' '.join(map(str, pids))})", flush=True)
        time.sleep(interval)


class CaptureSink:
    """capture_sink.py --no-content writing its JSON lines to tmpfs; `poll()` reads the
    records written since the last call and hands each message record to `on_message`."""

    def __init__(self, address="127.0.0.1", on_message=None):
        self.dir = tempfile.mkdtemp(prefix="shaping-sink-", dir=SHM)
        self.out = os.path.join(self.dir, "records.jsonl")
        self.err_path = os.path.join(self.dir, "stderr")
        self.err = open(self.err_path, "w")
        self.on_message = on_message
        self.proc = subprocess.Popen(
            [sys.executable, CAPTURE_SINK, "--listen", f"{address}:0", "--out", self.out,
             "--no-content", "--timeout", "600"],
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise OSError("capture_sink failed: " + open(self.err_path).read())
        self.port = json.loads(line)["port"]
        self.address = address
        self.offset = 0
        self.partial = b""
        self.messages = 0

    def poll(self):
        try:
            with open(self.out, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.startswith(b'{"conn_id"') or b'"type": "message"' not in line[-40:]:
                continue
            rec = json.loads(line)
            self.messages += 1
            if self.on_message:
                self.on_message(rec)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the injector ------------------------------------------------------------------------

def make_content(index, size, extra_headers=()):
    """A message of about `size` bytes (CRLF lines of 78 octets)."""
    head = [f"From: <s@sender.bench>", f"Subject: bench {index}",
            f"Message-ID: <bench-{index}@sender.bench>",
            "Date: Fri, 04 Dec 2026 10:00:00 +0000", *extra_headers]
    text = "\r\n".join(head) + "\r\n\r\n"
    line = "x" * 76 + "\r\n"
    while len(text) + len(line) <= size:
        text += line
    return text.encode()


def _inject_worker(port, jobs, batch, size, barrier, result_q, session_count):
    """One process: `session_count` sessions; jobs is a list of (index, rcpt); each session
    sends `batch` transactions per write (MAIL, RCPT, BDAT n LAST + content each)."""
    import selectors
    sel = selectors.DefaultSelector()
    sessions = []
    for s in range(session_count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.settimeout(30)
        f = sock.makefile("rb")
        if not f.readline().startswith(b"220"):
            raise RuntimeError("no greeting")
        sock.sendall(b"EHLO injector.bench\r\n")
        while True:
            line = f.readline()
            if line[3:4] == b" ":
                break
        sessions.append({"sock": sock, "jobs": jobs[s::session_count], "pos": 0,
                         "pending": 0, "buf": b"", "ok": 0, "bad": 0, "first_bad": None})
    barrier.wait()
    start = time.time()

    def send_batch(st):
        chunk = st["jobs"][st["pos"]:st["pos"] + batch]
        st["pos"] += len(chunk)
        out = []
        for index, rcpt in chunk:
            content = make_content(index, size)
            out.append(b"MAIL FROM:<s@sender.bench>\r\nRCPT TO:<%s>\r\nBDAT %d LAST\r\n"
                       % (rcpt.encode(), len(content)))
            out.append(content)
        st["pending"] = 3 * len(chunk)
        st["sock"].sendall(b"".join(out))

    active = 0
    for st in sessions:
        if st["jobs"]:
            st["sock"].setblocking(True)
            send_batch(st)
            sel.register(st["sock"], selectors.EVENT_READ, st)
            active += 1
    while active:
        for key, _ in sel.select(timeout=60):
            st = key.data
            data = st["sock"].recv(65536)
            if not data:
                raise RuntimeError("mtad closed an injector session")
            st["buf"] += data
            while b"\r\n" in st["buf"] and st["pending"]:
                line, st["buf"] = st["buf"].split(b"\r\n", 1)
                if line[3:4] == b"-":
                    continue
                st["pending"] -= 1
                if st["pending"] % 3 == 0:  # the BDAT reply of one transaction
                    if line.startswith(b"250"):
                        st["ok"] += 1
                    else:
                        st["bad"] += 1
                        st["first_bad"] = st["first_bad"] or line.decode("latin-1")
                elif not line.startswith(b"250"):
                    st["first_bad"] = st["first_bad"] or line.decode("latin-1")
            if st["pending"] == 0:
                if st["pos"] < len(st["jobs"]):
                    send_batch(st)
                else:
                    sel.unregister(st["sock"])
                    active -= 1
    end = time.time()
    for st in sessions:
        try:
            st["sock"].sendall(b"QUIT\r\n")
        except OSError:
            pass
        st["sock"].close()
    result_q.put({"ok": sum(s["ok"] for s in sessions), "bad": sum(s["bad"] for s in sessions),
                  "first_bad": next((s["first_bad"] for s in sessions if s["first_bad"]), None),
                  "start": start, "end": end})


class Injector:
    """`processes` worker processes with `sessions` SMTP sessions in total. prepare()
    connects and greets every session; go() releases them at once and returns the time;
    wait() returns (accepted, refused, first refusal, last 250 time)."""

    def __init__(self, port, rcpts, size=1024, sessions=100, processes=2, batch=4):
        ctx = multiprocessing.get_context("fork")
        self.barrier = ctx.Barrier(processes + 1)
        self.q = ctx.Queue()
        # Global indexes for the Message-IDs: position in `rcpts`.
        indexed = list(enumerate(rcpts))
        per = [indexed[p::processes] for p in range(processes)]
        self.procs = [ctx.Process(target=_inject_worker,
                                  args=(port, per[p], batch, size, self.barrier, self.q,
                                        max(1, sessions // processes)), daemon=True)
                      for p in range(processes)]

    def prepare(self):
        for p in self.procs:
            p.start()
        return self

    def go(self):
        self.barrier.wait(timeout=60)
        return time.time()

    def wait(self, timeout=900):
        results = [self.q.get(timeout=timeout) for _ in self.procs]
        for p in self.procs:
            p.join(timeout=10)
        return (sum(r["ok"] for r in results), sum(r["bad"] for r in results),
                next((r["first_bad"] for r in results if r["first_bad"]), None),
                max(r["end"] for r in results))


# ---- fixtures ----------------------------------------------------------------------------

class SmtpSink:
    """Postfix's smtp-sink counting messages (-c), as relay_bench's Sink, but with its
    connection cap (-m, default 256: further connections wait in the listen queue) and
    its backlog raised: mtad may hold up to max_connections per site, for many sites.
    Listens on address:port (port 0: a free one)."""

    def __init__(self, address="127.0.0.1", port=0, max_connections=16000, backlog=4096):
        import re
        import threading
        self.address = address
        self.port = port or harness.free_port()
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", "-m", str(max_connections),
             f"{address}:{self.port}", str(backlog)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.count = 0
        self._re = re.compile(rb"mesg=(\d+)")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while True:  # until it accepts connections
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtp-sink on {address}:{self.port} exited")
            try:
                with socket.create_connection((address, self.port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def _read(self):
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            buf = (buf + chunk)[-200:]
            m = self._re.findall(buf)
            if m:
                self.count = int(m[-1])

    def wait_for(self, n, timeout, marks=()):
        """Waits until the sink has counted `n` messages; returns the time. `marks`: counts
        whose first-reached times are returned as well, {count: time}."""
        deadline = time.time() + timeout
        reached = {}
        pending = sorted(marks)
        while True:
            count = self.count
            now = time.time()
            while pending and count >= pending[0]:
                reached[pending.pop(0)] = now
            if count >= n:
                return (now, reached) if marks else now
            if now > deadline:
                raise RuntimeError(f"sink has {count} of {n} after {timeout} s")
            time.sleep(0.005)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class SinkGroup:
    """`n` smtp-sinks on 127.0.0.<first>, <first + 1>, ... sharing one port: the MX hosts
    of a benchmark zone spread over them, so no single listen queue takes every connection
    mtad opens (1,000 sites x 10 connections overflow one queue of 4,096: the kernel drops
    the SYNs and the client's retransmissions after 1, 3, 7 s stretch a run by seconds)."""

    def __init__(self, n, first=11):
        self.addresses = [f"127.0.0.{first + i}" for i in range(n)]
        for _ in range(20):
            port = harness.free_port()
            self.sinks = []
            try:
                for a in self.addresses:
                    self.sinks.append(SmtpSink(a, port))
                self.port = port
                return
            except (OSError, RuntimeError):
                for sink in self.sinks:
                    sink.stop()
        raise RuntimeError("no port free on every sink address")

    @property
    def count(self):
        return sum(s.count for s in self.sinks)

    def wait_for(self, n, timeout, marks=()):
        deadline = time.time() + timeout
        reached = {}
        pending = sorted(marks)
        while True:
            count = self.count
            now = time.time()
            while pending and count >= pending[0]:
                reached[pending.pop(0)] = now
            if count >= n:
                return (now, reached) if marks else now
            if now > deadline:
                raise RuntimeError(f"sinks have {count} of {n} after {timeout} s")
            time.sleep(0.005)

    def stop(self):
        for s in self.sinks:
            s.stop()


def listen_overflows():
    """The kernel's count of connections dropped because a listen queue was full."""
    with open("/proc/net/netstat") as f:
        lines = [l.split() for l in f if l.startswith("TcpExt:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["ListenOverflows"])


def start_nsd(zones, timeout=20):
    """tests/integration/dns_server.py's NsdServer, with nsd's response rate limiting off.

    nsd (Debian 4.6) limits answers per client /24 by default (rrl-ratelimit: 200/s): a
    burst of 1,000+ look-ups from 127.0.0.1 (MX, then A and AAAA of each MX host) trips
    it: answers are dropped or truncated, so mtad's look-ups wait out timeouts or retry
    over TCP, and any that still fail defer their mail. The configuration NsdServer
    writes is extended with `rrl-ratelimit: 0` (subprocess.Popen is wrapped for the
    duration of start(): NsdServer has no option for it)."""
    import dns_server
    real_popen = subprocess.Popen
    server = dns_server.NsdServer(zones)

    def popen(args, *a, **kw):
        conf = args[args.index("-c") + 1]
        with open(conf) as f:
            text = f.read()
        text = text.replace("server:\n", "server:\n  rrl-ratelimit: 0\n"
                            "  rrl-whitelist-ratelimit: 0\n", 1)
        with open(conf, "w") as f:
            f.write(text)
        return real_popen(args, *a, **kw)

    dns_server.subprocess.Popen = popen
    try:
        return server.start(timeout=timeout)
    finally:
        dns_server.subprocess.Popen = real_popen


class OverlapWatch:
    """Samples others_busy() every `interval` s from a thread while a run goes on; `busy`
    says whether another test run or mtad was seen during it."""

    def __init__(self, pattern=BUSY_PATTERN, interval=5):
        import threading
        self.pattern = pattern
        self.interval = interval
        self.busy = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            if others_busy(self.pattern):
                self.busy = True
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def notable_log_lines(log):
    """mtad log lines worth reporting: warnings, errors, and INFO lines other than the
    routine ones (start, stop, one 'connected to' per outbound connection), e.g.
    'delivery: <site>: <why the site could not be reached>'."""
    routine = ("delivery: connected to", "recovered ", "mtad ready", "signal ", "stopped ",
               "SIGHUP: reloaded")
    out = []
    for line in log.splitlines():
        parts = line.split(" ", 2)  # time, level, message
        if len(parts) == 3 and parts[1] == "INFO" and parts[2].startswith(routine):
            continue
        if len(parts) == 3 and parts[1] == "DEBUG":
            continue
        out.append(line)
    return out
