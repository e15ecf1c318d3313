"""Starts a real mtad for integration tests and talks to it over real sockets."""

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _find_binary(env_name, rel_path):
    path = os.environ.get(env_name)
    if path:
        return os.path.abspath(path)
    candidate = os.path.join(ROOT, "bazel-bin", rel_path)
    if os.path.exists(candidate):
        return candidate
    raise RuntimeError(f"set {env_name} or build {rel_path} with bazel")


MTAD = None
SPOOL_DUMP = None


def binaries():
    global MTAD, SPOOL_DUMP
    if MTAD is None:
        MTAD = _find_binary("MTAD", "mta/server/mtad")
        SPOOL_DUMP = _find_binary("SPOOL_DUMP", "tools/spool_dump/spool_dump")
    return MTAD, SPOOL_DUMP


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _yaml_list(items):
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


class Mtad:
    """One mtad process with its own spool directory and port."""

    def __init__(self, workdir=None, shards=2, listener=None, server=None, limits=None,
                 spool=None, preexec_fn=None, delivery=None, sections=None, http=None):
        self.workdir = workdir or tempfile.mkdtemp(prefix="mtad-it-")
        self.port = free_port()
        self.shards = shards
        self.listener = {"name": "test", "address": f"127.0.0.1:{self.port}"}
        self.listener.update(listener or {})
        self.server = {"hostname": "mx.test.example", "log_level": "info"}
        self.server.update(server or {})
        self.limits = limits or {}
        self.spool = {"path": os.path.join(self.workdir, "spool"), "min_free_disk_mb": 0}
        self.spool.update(spool or {})
        self.preexec_fn = preexec_fn
        self.http_port = free_port()
        # The http section (address, admin_token_file, ...); the address defaults to loopback.
        self.http = {"address": f"127.0.0.1:{self.http_port}"}
        self.http.update(http or {})
        # Delivery stays off unless a test configures it: tests never reach real MX hosts.
        self.delivery = {"enabled": False} if delivery is None else delivery
        # Further top-level sections (egress, streams, shaping, suspended, ...), each written
        # as JSON, which is YAML flow style. Change them and call reload() to apply them live.
        self.sections = dict(sections or {})
        self.proc = None
        self.log_path = os.path.join(self.workdir, "mtad.log")
        self.config_path = os.path.join(self.workdir, "mtad.yaml")

    def config_text(self):
        lines = ["server:"]
        for k, v in self.server.items():
            lines.append(f"  {k}: {_yaml_list(v) if isinstance(v, list) else json.dumps(v)}")
        lines.append("spool:")
        for k, v in self.spool.items():
            lines.append(f"  {k}: {json.dumps(v)}")
        lines.append("http:")
        for k, v in self.http.items():
            lines.append(f"  {k}: {json.dumps(v)}")
        if self.delivery:
            lines.append("delivery:")
            for k, v in self.delivery.items():
                lines.append(f"  {k}: {_yaml_list(v) if isinstance(v, list) else json.dumps(v)}")
        if self.limits:
            lines.append("limits:")
            for k, v in self.limits.items():
                lines.append(f"  {k}: {json.dumps(v)}")
        lines.append("listeners:")
        first = True
        for k, v in self.listener.items():
            prefix = "  - " if first else "    "
            first = False
            val = _yaml_list(v) if isinstance(v, list) else json.dumps(v)
            lines.append(f"{prefix}{k}: {val}")
        for k, v in self.sections.items():
            lines.append(f"{k}: {json.dumps(v)}")
        return "\n".join(lines) + "\n"

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(self.config_text())

    def start(self, timeout=15):
        mtad, _ = binaries()
        self.write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([mtad, "--config", self.config_path,
                                      "--shards", str(self.shards)],
                                     cwd=self.workdir, stdout=log, stderr=log,
                                     preexec_fn=self.preexec_fn)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mtad exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(5)
                    if self.listener.get("tls") == "implicit":
                        ctx = ssl.create_default_context()
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                        s = ctx.wrap_socket(s)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mtad did not start: " + self.log())

    def reload(self, timeout=10):
        """Rewrites the configuration file from the current attributes and sends SIGHUP;
        returns once mtad has logged the reload (raises if it kept the old configuration)."""
        before = self.log().count("SIGHUP: ")
        self.write_config()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + timeout
        while time.time() < deadline:
            lines = [l for l in self.log().splitlines() if "SIGHUP: " in l][before:]
            for line in lines:
                if "SIGHUP: reloaded" in line:
                    return self
                raise RuntimeError("mtad did not reload: " + line)
            time.sleep(0.05)
        raise RuntimeError("mtad did not log the reload: " + self.log()[-2000:])

    def stop(self, timeout=30):
        """Graceful stop (SIGTERM); returns the exit code."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        return rc

    def kill9(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def dump(self):
        """Every spooled message (mtad must be stopped): list of dicts with 'content' bytes."""
        _, dump = binaries()
        out = subprocess.run([dump, self.spool["path"]], check=True, capture_output=True,
                             timeout=60).stdout
        records = []
        for line in out.decode().splitlines():
            rec = json.loads(line)
            rec["content"] = base64.b64decode(rec.pop("content_base64"))
            records.append(rec)
        return records


def strip_received(content):
    """Removes the Received: header mtad prepends (first field, with its folded lines)."""
    assert content.startswith(b"Received: "), content[:80]
    end = content.index(b"\r\n")
    while content[end + 2:end + 3] in (b" ", b"\t"):
        end = content.index(b"\r\n", end + 2)
    return content[end + 2:]


class CaptureSink:
    """One capture_sink.py process listening on `addresses` (`port`: 0 = a free port per
    address; else that port on each), with --stats and the given extra arguments. `ports`
    maps each address to its port; `port` is the first one's."""

    def __init__(self, addresses=("127.0.0.1",), script=None, args=(), port=0,
                 prefix="capture-sink-"):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.out = os.path.join(self.dir, "records.jsonl")
        self.stats_path = os.path.join(self.dir, "stats.json")
        self.err = open(os.path.join(self.dir, "stderr"), "w")
        cmd = [sys.executable, os.path.join(ROOT, "tests", "integration", "capture_sink.py"),
               "--out", self.out, "--stats", self.stats_path,
               "--script", json.dumps(script or {}), *args]
        for a in addresses:
            cmd += ["--listen", f"{a}:{port}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.ports = {}
        for _ in addresses:
            line = self.proc.stdout.readline()
            if not line:
                self.stop()
                with open(os.path.join(self.dir, "stderr")) as f:
                    raise OSError("capture_sink failed: " + f.read())
            event = json.loads(line)
            self.ports[event["address"]] = event["port"]
        self.address = addresses[0]
        self.port = self.ports[self.address]

    def records(self, kind=None):
        """The complete records so far (the sink may be writing the last line right now),
        of `kind` ("message", "connection", "refusal") or all."""
        try:
            with open(self.out) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        recs = [json.loads(l) for l in text.split("\n")[:-1] if l.strip()]
        return [r for r in recs if kind in (None, r["type"])]

    def messages(self):
        return self.records("message")

    def stats(self):
        with open(self.stats_path) as f:
            return json.load(f)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


class RawSmtp:
    """A byte-exact SMTP client for framing tests (smtplib normalizes what we must test)."""

    def __init__(self, port, timeout=10, read_greeting=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        if read_greeting:
            self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """Reads one (possibly multi-line) reply; returns (code, text)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(f"connection closed; partial={self.buf!r} lines={lines}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(l[4:] for l in lines)

    def cmd(self, line):
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def closed_by_peer(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def main():
    """Runs the calling module's tests; writes JUnit XML where Bazel asks for it."""
    import sys
    import unittest
    from xml.sax.saxutils import quoteattr

    class Recorder(unittest.TextTestResult):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cases = []
            self.started = 0.0

        def startTest(self, test):
            self.started = time.time()
            super().startTest(test)

        def _record(self, test, outcome, detail=""):
            self.cases.append((test.id(), time.time() - self.started, outcome, detail))

        def addSuccess(self, test):
            super().addSuccess(test)
            self._record(test, "pass")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._record(test, "failure", self._exc_info_to_string(err, test))

        def addError(self, test, err):
            super().addError(test, err)
            self._record(test, "error", self._exc_info_to_string(err, test))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._record(test, "skipped", reason)

    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules["__main__"])
    result = unittest.TextTestRunner(verbosity=2, resultclass=Recorder).run(suite)
    xml_path = os.environ.get("XML_OUTPUT_FILE")
    if xml_path:
        failures = sum(1 for c in result.cases if c[2] in ("failure", "error"))
        lines = [f'<testsuites tests="{len(result.cases)}" failures="{failures}">',
                 f'<testsuite name="integration" tests="{len(result.cases)}" '
                 f'failures="{failures}">']
        for name, secs, outcome, detail in result.cases:
            lines.append(f'<testcase name={quoteattr(name)} time="{secs:.3f}">')
            if outcome in ("failure", "error"):
                lines.append(f"<failure message={quoteattr(outcome)}>{quoteattr(detail)}</failure>")
            elif outcome == "skipped":
                lines.append(f"<skipped message={quoteattr(detail)}/>")
            lines.append("</testcase>")
        lines.append("</testsuite></testsuites>")
        with open(xml_path, "w") as f:
            f.write("\n".join(lines) + "\n")
    sys.exit(0 if result.wasSuccessful() else 1)
