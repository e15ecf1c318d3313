#!/usr/bin/env python3
"""Inbound TLS and DKIM end to end (issue 6), on loopback, bounded in time.

1. Relay throughput, injector -> mtad -> smtp-sink (as benchmarks/relay/relay_bench.py:
   1 KB, 1 recipient, 100 parallel sessions each carrying many messages, delivery routed to
   Postfix's smtp-sink), for four cases alternated run by run:
     plain         no TLS, no DKIM
     dkim-rsa      DKIM RSA-2048 (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048)
     dkim-ed25519  DKIM Ed25519 (openssl genpkey -algorithm ed25519)
     tls           inbound implicit TLS (RSA-2048 certificate), no DKIM; the clients wrap
                   their sockets with Python's ssl (no verification) and do the handshake
                   before the clock starts, so only the record layer is measured
   The same Python injector (worker processes, raw sockets, PIPELINING + `BDAT n LAST`,
   one transaction in flight per session) drives every case: smtp-source cannot speak TLS.
   Messages have `From: <a@example.com>`, the DKIM signing domain, so every one is signed.
   A run's time is from the release of the (already greeted) sessions until the sink has
   counted every message; mtad's CPU seconds come from /proc/<pid>/stat (utime + stime).

2. Inbound TLS handshakes per second per core: mtad --shards 1 with an implicit-TLS
   listener; N client processes make --handshakes short connections in all (connect, full
   handshake without session resumption, read 220, QUIT, read 221, close). Reported:
   handshakes/s (wall) and mtad CPU seconds per handshake; the per-core figure is
   handshakes / mtad CPU seconds. RSA-2048 and ECDSA P-256 certificates, alternated.
   The Python clients share the machine's cores with mtad.

usage: benchmarks/security/security_bench.py [--runs 3] [--quick] [--write]
"""

import argparse
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "shaping"))

import common  # noqa: E402
from common import harness  # noqa: E402

SECTION = "Inbound TLS and DKIM end to end (issue 6)"
DOMAIN = "example.com"
CASES = ["plain", "dkim-rsa", "dkim-ed25519", "tls"]


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_keys(d):
    keys = {"rsa": os.path.join(d, "dkim-rsa.pem"), "ed": os.path.join(d, "dkim-ed.pem"),
            "cert-rsa": os.path.join(d, "cert-rsa.pem"), "key-rsa": os.path.join(d, "key-rsa.pem"),
            "cert-ec": os.path.join(d, "cert-ec.pem"), "key-ec": os.path.join(d, "key-ec.pem")}
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
            keys["rsa"])
    openssl("genpkey", "-algorithm", "ed25519", "-out", keys["ed"])
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=mx.test.example", "-keyout", keys["key-rsa"], "-out", keys["cert-rsa"])
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=mx.test.example", "-keyout", keys["key-ec"], "-out",
            keys["cert-ec"])
    return keys


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store: nothing is verified
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def mtad_for(case, keys, sink_port, shards):
    listener, sections = {}, {}
    if case == "tls":
        listener = {"tls": "implicit", "tls_cert_file": keys["cert-rsa"],
                    "tls_key_file": keys["key-rsa"]}
    elif case == "dkim-rsa":
        sections = {"dkim": {"signing": [{"domain": DOMAIN, "selector": "rsa1",
                                          "key_file": keys["rsa"]}]}}
    elif case == "dkim-ed25519":
        sections = {"dkim": {"signing": [{"domain": DOMAIN, "selector": "ed1",
                                          "key_file": keys["ed"]}]}}
    return harness.Mtad(shards=shards, listener=listener, sections=sections,
                        limits={"max_connections_per_ip": 10000},
                        delivery={"routes": [{"domain": "*", "host": "127.0.0.1",
                                              "port": sink_port, "tls": "none"}]})


# ---- relay throughput --------------------------------------------------------------------

def content(index, size):
    head = [f"From: <a@{DOMAIN}>", "To: <rcpt@dest.test>", f"Subject: bench {index}",
            f"Message-ID: <sec-{index}@{DOMAIN}>", "Date: Fri, 04 Dec 2026 10:00:00 +0000"]
    text = "\r\n".join(head) + "\r\n\r\n"
    line = "x" * 76 + "\r\n"
    while len(text) + len(line) <= size:
        text += line
    return text.encode()


def read_reply(sock, buf):
    """Reads one (possibly multi-line) reply from a blocking socket; returns (line, buf)."""
    while True:
        while b"\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("connection closed")
            buf += data
        line, buf = buf.split(b"\r\n", 1)
        if line[3:4] != b"-":
            return line, buf


def _inject_worker(port, tls, indexes, size, sessions, barrier, q):
    import selectors
    sel = selectors.DefaultSelector()
    ctx = client_context() if tls else None
    states = []
    for s in range(sessions):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = ctx.wrap_socket(sock)
        line, buf = read_reply(sock, b"")
        if not line.startswith(b"220"):
            raise RuntimeError(f"greeting {line!r}")
        sock.sendall(b"EHLO injector.bench\r\n")
        line, buf = read_reply(sock, buf)
        states.append({"sock": sock, "jobs": indexes[s::sessions], "pos": 0, "pending": 0,
                       "buf": buf, "ok": 0, "bad": 0, "first_bad": None})
    barrier.wait()
    start = time.time()

    def send_one(st):
        index = st["jobs"][st["pos"]]
        st["pos"] += 1
        body = content(index, size)
        st["pending"] = 3
        st["sock"].sendall(b"MAIL FROM:<sender@%s>\r\nRCPT TO:<rcpt@dest.test>\r\n"
                           b"BDAT %d LAST\r\n%s" % (DOMAIN.encode(), len(body), body))

    active = 0
    for st in states:
        if st["jobs"]:
            send_one(st)
            sel.register(st["sock"], selectors.EVENT_READ, st)
            active += 1
    while active:
        for key, _ in sel.select(timeout=120):
            st = key.data
            sock = st["sock"]
            data = sock.recv(65536)
            if tls:
                while sock.pending():
                    data += sock.recv(65536)
            if not data:
                raise RuntimeError("mtad closed an injector session")
            st["buf"] += data
            while b"\r\n" in st["buf"] and st["pending"]:
                line, st["buf"] = st["buf"].split(b"\r\n", 1)
                if line[3:4] == b"-":
                    continue
                st["pending"] -= 1
                if st["pending"] == 0:
                    if line.startswith(b"250"):
                        st["ok"] += 1
                    else:
                        st["bad"] += 1
                        st["first_bad"] = st["first_bad"] or line.decode("latin-1")
                elif not line.startswith(b"250"):
                    st["first_bad"] = st["first_bad"] or line.decode("latin-1")
            if st["pending"] == 0:
                if st["pos"] < len(st["jobs"]):
                    send_one(st)
                else:
                    sel.unregister(sock)
                    active -= 1
    end = time.time()
    for st in states:
        try:
            st["sock"].sendall(b"QUIT\r\n")
            st["sock"].close()
        except OSError:
            pass
    q.put({"ok": sum(s["ok"] for s in states), "bad": sum(s["bad"] for s in states),
           "first_bad": next((s["first_bad"] for s in states if s["first_bad"]), None),
           "start": start, "end": end})


def relay_run(case, keys, sink, args):
    m = mtad_for(case, keys, sink.port, args.shards).start()
    try:
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(args.processes + 1)
        q = ctx.Queue()
        idx = list(range(args.messages))
        procs = [ctx.Process(target=_inject_worker, daemon=True,
                             args=(m.port, case == "tls", idx[p::args.processes], args.size,
                                   args.sessions // args.processes, barrier, q))
                 for p in range(args.processes)]
        for p in procs:
            p.start()
        base = sink.count
        barrier.wait(timeout=120)
        cpu0, t0 = cpu_seconds(m.proc.pid), time.time()
        results = [q.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        ok = sum(r["ok"] for r in results)
        bad = sum(r["bad"] for r in results)
        if bad:
            raise RuntimeError(f"{case}: {bad} refused, first: "
                               f"{next(r['first_bad'] for r in results if r['first_bad'])}")
        t1 = sink.wait_for(base + ok, timeout=600)
        cpu1 = cpu_seconds(m.proc.pid)
        accept_rate = ok / (max(r["end"] for r in results) - t0)
        return ok / (t1 - t0), accept_rate, (cpu1 - cpu0) / ok
    finally:
        m.stop()
        shutil.rmtree(m.workdir, ignore_errors=True)


def sanity(case, keys):
    """One message through the case's mtad into a dumping smtp-sink: checks that DKIM cases
    sign (with the expected algorithm) and that the TLS case says ESMTPS."""
    import re
    dump = tempfile.mkdtemp(prefix="sec-sink-", dir=common.SHM)
    os.chmod(dump, 0o777)
    port = harness.free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-d", os.path.join(dump, "%H%M%S."),
                             f"127.0.0.1:{port}", "100"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    m = mtad_for(case, keys, port, 1).start()
    try:
        sock = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        if case == "tls":
            sock = client_context().wrap_socket(sock)
        buf = b""
        for cmd in (None, b"EHLO sanity.bench\r\n"):
            if cmd:
                sock.sendall(cmd)
            line, buf = read_reply(sock, buf)
        body = content(0, 1024)
        sock.sendall(b"MAIL FROM:<sender@%s>\r\nRCPT TO:<rcpt@dest.test>\r\nBDAT %d LAST\r\n%s"
                     % (DOMAIN.encode(), len(body), body))
        for _ in range(3):
            line, buf = read_reply(sock, buf)
            assert line.startswith(b"250"), (case, line)
        sock.sendall(b"QUIT\r\n")
        sock.close()
        deadline = time.time() + 20
        while time.time() < deadline and not os.listdir(dump):
            time.sleep(0.1)
        time.sleep(0.3)
        files = os.listdir(dump)
        assert files, f"{case}: nothing delivered"
        with open(os.path.join(dump, files[0]), "rb") as f:
            data = f.read()
        algs = re.findall(rb"DKIM-Signature:.*?a=([a-z0-9-]+)", data, re.S)
        want = {"dkim-rsa": [b"rsa-sha256"], "dkim-ed25519": [b"ed25519-sha256"]}.get(case, [])
        assert algs == want, (case, algs)
        if case == "tls":
            assert b"with ESMTPS" in data, data[:400]
        return "ok"
    finally:
        m.stop()
        shutil.rmtree(m.workdir, ignore_errors=True)
        sink.terminate()
        sink.wait()
        shutil.rmtree(dump, ignore_errors=True)


# ---- handshakes --------------------------------------------------------------------------

def _handshake_worker(port, count, barrier, q):
    ctx = client_context()
    barrier.wait()
    start, cpu0 = time.time(), time.process_time()
    fails = 0
    info = None
    for _ in range(count):
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = ctx.wrap_socket(raw)
            line, buf = read_reply(s, b"")
            assert line.startswith(b"220"), line
            s.sendall(b"QUIT\r\n")
            line, buf = read_reply(s, buf)
            if info is None:
                info = (s.version(), s.cipher()[0])
            s.close()
        except (OSError, AssertionError, RuntimeError):
            fails += 1
    q.put({"start": start, "end": time.time(), "fails": fails, "info": info,
           "cpu": time.process_time() - cpu0})


def handshake_run(cert, keys, args):
    m = harness.Mtad(shards=1, limits={"max_connections_per_ip": 10000},
                     listener={"tls": "implicit", "tls_cert_file": keys[f"cert-{cert}"],
                               "tls_key_file": keys[f"key-{cert}"]}).start()
    try:
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(args.clients + 1)
        q = ctx.Queue()
        per = args.handshakes // args.clients
        procs = [ctx.Process(target=_handshake_worker, args=(m.port, per, barrier, q),
                             daemon=True) for _ in range(args.clients)]
        for p in procs:
            p.start()
        time.sleep(0.5)  # let the workers import and reach the barrier
        cpu0 = cpu_seconds(m.proc.pid)
        barrier.wait(timeout=60)
        t0 = time.time()
        results = [q.get(timeout=600) for _ in procs]
        t1 = time.time()
        cpu1 = cpu_seconds(m.proc.pid)
        for p in procs:
            p.join(timeout=30)
        done = per * args.clients - sum(r["fails"] for r in results)
        fails = sum(r["fails"] for r in results)
        info = next((r["info"] for r in results if r["info"]), None)
        client_cpu = sum(r["cpu"] for r in results)
        mcpu = cpu1 - cpu0
        return {"rate": done / (t1 - t0), "cpu_per": mcpu / done, "per_core": done / mcpu,
                "fails": fails, "info": info, "client_cpu_per": client_cpu / done}
    finally:
        m.stop()
        shutil.rmtree(m.workdir, ignore_errors=True)


# ---- main --------------------------------------------------------------------------------

def runs_text(values, fmt="{:.0f}"):
    return ", ".join(fmt.format(v) for v in values)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 run, fewer messages/handshakes")
    ap.add_argument("--messages", type=int, default=10000, help="per relay run")
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--processes", type=int, default=2, help="injector worker processes")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=os.cpu_count(), help="relay part")
    ap.add_argument("--handshakes", type=int, default=3000, help="per handshake run")
    ap.add_argument("--clients", type=int, default=8, help="handshake client processes")
    ap.add_argument("--skip-relay", action="store_true")
    ap.add_argument("--skip-handshakes", action="store_true")
    ap.add_argument("--write", action="store_true", help=f"write the '{SECTION}' section")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.messages, args.handshakes = 1, 2000, 600
    common.raise_nofile()
    binfo = common.snapshot_binaries()
    machine = common.machine_note()
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    keydir = tempfile.mkdtemp(prefix="sec-keys-")
    keys = make_keys(keydir)
    out = []

    try:
        if not args.skip_relay:
            for case in CASES:
                print(f"sanity {case}: {sanity(case, keys)}", flush=True)
            sink = common.SmtpSink()
            res = {c: [] for c in CASES}
            try:
                for r in range(args.runs):
                    for case in CASES:
                        rate, acc, cpu = relay_run(case, keys, sink, args)
                        res[case].append((rate, acc, cpu))
                        print(f"run {r + 1} {case}: {rate:.0f} msg/s delivered, "
                              f"{acc:.0f} msg/s accepted, mtad {cpu * 1e6:.0f} µs CPU/msg",
                              flush=True)
            finally:
                sink.stop()
            plain = statistics.median(x[0] for x in res["plain"])
            out.append(f"Relay, {args.size // 1024} KB, 1 recipient, {args.sessions} sessions, "
                       f"{args.messages:,} messages per run, mtad --shards {args.shards}; "
                       f"medians of {args.runs} runs:\n")
            out.append("| case | msg/s (delivered) | vs plain | accepted msg/s | "
                       "mtad CPU µs/msg | runs msg/s |")
            out.append("|---|---:|---:|---:|---:|---|")
            for case in CASES:
                rate = statistics.median(x[0] for x in res[case])
                acc = statistics.median(x[1] for x in res[case])
                cpu = statistics.median(x[2] for x in res[case])
                out.append(f"| {case} | {rate:.0f} | {rate / plain:.2f} | {acc:.0f} | "
                           f"{cpu * 1e6:.0f} | {runs_text([x[0] for x in res[case]])} |")
            out.append("")

        if not args.skip_handshakes:
            hres = {"rsa": [], "ec": []}
            for r in range(args.runs):
                for cert in ("rsa", "ec"):
                    h = handshake_run(cert, keys, args)
                    hres[cert].append(h)
                    print(f"run {r + 1} handshakes {cert}: {h['rate']:.0f}/s, mtad "
                          f"{h['cpu_per'] * 1e6:.0f} µs CPU each ({h['per_core']:.0f} per "
                          f"core-second), client {h['client_cpu_per'] * 1e6:.0f} µs CPU each, "
                          f"{h['fails']} failed, {h['info']}", flush=True)
            out.append(f"Implicit-TLS handshakes, mtad --shards 1, {args.clients} client "
                       f"processes, {args.handshakes:,} connections per run; medians of "
                       f"{args.runs} runs:\n")
            out.append("| certificate | negotiated | handshakes/s (wall) | mtad CPU µs/handshake "
                       "| handshakes per mtad CPU second | client CPU µs/handshake | "
                       "runs handshakes/s |")
            out.append("|---|---|---:|---:|---:|---:|---|")
            for cert, label in (("rsa", "RSA-2048"), ("ec", "ECDSA P-256")):
                hs = hres[cert]
                info = next((h["info"] for h in hs if h["info"]), ("?", "?"))
                out.append(
                    f"| {label} | {info[0]} {info[1]} | "
                    f"{statistics.median(h['rate'] for h in hs):.0f} | "
                    f"{statistics.median(h['cpu_per'] for h in hs) * 1e6:.0f} | "
                    f"{statistics.median(h['per_core'] for h in hs):.0f} | "
                    f"{statistics.median(h['client_cpu_per'] for h in hs) * 1e6:.0f} | "
                    f"{runs_text([h['rate'] for h in hs])} |")
                fails = sum(h["fails"] for h in hs)
                if fails:
                    out.append(f"\n{label}: {fails} connections failed.")
            out.append("")
    finally:
        shutil.rmtree(keydir, ignore_errors=True)

    table = "\n".join(out)
    print("\n" + table)
    if args.write:
        body = (f"Command ({began}; {machine}):\n\n```sh\nbazel build //mta/server:mtad "
                f"//tools/spool_dump\npython3 benchmarks/security/security_bench.py "
                f"{' '.join(a for a in sys.argv[1:])}\n```\n\n{common.binary_note(binfo)}.\n\n"
                + table)
        common.replace_section(SECTION, body)


if __name__ == "__main__":
    main()
