"""The Grafana dashboard (tools/grafana/mta-dashboard.json) against a real Prometheus.

A real Prometheus (Debian's /usr/bin/prometheus) scrapes a real mtad's /metrics every second
while mtad takes a bounded load over SMTP (smtplib, some sessions with STARTTLS) and delivers
it to capture_sink.py servers on loopback: one that refuses some recipients (550 5.1.1),
defers some once (452 4.2.2, 451 4.7.1 matched by a backoff rule) and defers some for ever
(they expire: their stream's queue lifetime is 3 s), one reached through a real nsd with
STARTTLS, plus an NXDOMAIN destination, a destination suspended through the admin API and a
webhook endpoint that fails its first POST.

Then every target of every panel, with the Grafana variables substituted ($__rate_interval
-> 1m, the template variables -> ".*" and then concrete multi-value regexes), is run through
Prometheus's HTTP API and must return data; the key counters must equal what the sinks and
the webhook endpoint received.
"""

import http.server
import json
import math
import os
import random
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import harness
from dns_server import NsdServer

DASHBOARD = os.path.join(harness.ROOT, "tools", "grafana", "mta-dashboard.json")
PROMETHEUS = "/usr/bin/prometheus"

RATE_INTERVAL = "1m"  # covers the whole load when the panels are queried
MESSAGES = 300  # sent over LOAD_SECONDS by THREADS smtplib clients
LOAD_SECONDS = 10
THREADS = 4
MESSAGES_PER_SESSION = 25

ZONE = """
tls     IN MX 10 mx.tls
mx.tls  IN A 127.0.0.1
"""

SINK_RULES = {"rules": [
    {"command": "RCPT", "match": "^<unknown-", "reply": "550 5.1.1 No such user here"},
    {"command": "RCPT", "match": "^<full-", "reply": "452 4.2.2 Mailbox full", "times": 1},
    {"command": "RCPT", "match": r"@slow\.test>", "times": 1,
     "reply": "451 4.7.1 Rate limited, slow down"},
    {"command": "RCPT", "match": r"@expire\.test>", "reply": "451 4.3.0 Temporary failure"},
]}


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def make_cert(directory):
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.tls.dns.test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


class Sink(harness.CaptureSink):
    """capture_sink.py --no-content on 127.0.0.1 (a free port), optionally with TLS."""

    def __init__(self, script=None, tls=None):
        args = ["--no-content"] + (["--tls-cert", tls[0], "--tls-key", tls[1]] if tls else [])
        super().__init__(script=script, args=args, prefix="dashboard-sink-")

    def route(self, domain):
        return {"domain": domain, "host": "127.0.0.1", "port": self.port, "tls": "none"}

    def stop(self):
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class WebhookReceiver:
    """An HTTP endpoint for mtad's event webhook: answers 503 to the first POST (mtad must
    retry it), then 200, and counts the events of the POSTs it acknowledged."""

    def __init__(self, fail_first=1):
        self.lock = threading.Lock()
        self.posts = 0
        self.events = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.posts += 1
                    ok = receiver.posts > fail_first
                    if ok:
                        receiver.events += len(json.loads(body))
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def acknowledged(self):
        with self.lock:
            return self.events

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    """A real Prometheus scraping `target` (host:port of /metrics) every second."""

    def __init__(self, target):
        self.dir = tempfile.mkdtemp(prefix="dashboard-prometheus-")
        self.port = harness.free_port()
        self.target = target
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: mtad\n    static_configs:\n"
                    f"      - targets: [\"{target}\"]\n")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=self.log, stderr=self.log)  # in our process group: a Bazel timeout kills it

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout=20):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.logs()}")
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, timeout, "prometheus to be ready")

    def api(self, path, params):
        url = self.url(path) + "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr):
        """Instant query at now: list of (labels, float value)."""
        data = self.api("/api/v1/query", {"query": expr})
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr):
        """The single value of `expr`, or None when it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, (expr, result)
        return result[0][1]

    def label_values(self, label, match):
        return self.api(f"/api/v1/label/{label}/values", {"match[]": [match]})

    def logs(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def plan():
    """The load: list of (recipients, stream header or None, size of the body padding)."""
    rng = random.Random(7)
    items = []
    for i in range(MESSAGES):
        k = i % 10
        stream = None
        if k <= 4:
            rcpts = [f"u{i}@fast.test"] + ([f"v{i}@fast.test"] if i % 3 == 0 else [])
        elif k == 5:
            rcpts = [f"u{i}@fast.test", f"unknown-{i}@fast.test"]
        elif k == 6:
            rcpts = [f"full-{i}@fast.test"]
        elif k == 7:
            rcpts = [f"s{i}@slow.test"]
        elif k == 8:
            rcpts = [f"t{i}@tls.dns.test"]
        else:
            kind = (i // 10) % 3
            if kind == 0:
                rcpts, stream = [f"e{i}@expire.test"], "shortlived"
            elif kind == 1:
                rcpts = [f"h{i}@held.test"]
            else:
                rcpts = [f"n{i}@nosuch.dns.test"]
        items.append((rcpts, stream, rng.choice([200, 2000, 6000, 30000])))
    return items


def content(i, rcpts, stream, padding):
    headers = ["From: s@sender.test", f"To: {', '.join(rcpts)}", f"Subject: dashboard {i}",
               f"Message-ID: <dashboard-{i}@sender.test>",
               "Date: Fri, 04 Dec 2026 10:00:00 +0000"]
    if stream is not None:
        headers.append(f"X-Stream: {stream}")
    body = "".join(f"line {n} of message {i} " + "x" * 60 + "\r\n"
                   for n in range(max(1, padding // 80)))
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def send_load(port, items):
    """THREADS smtplib clients, MESSAGES_PER_SESSION messages per session, every other
    session with STARTTLS, paced to spread the load over LOAD_SECONDS. Returns
    (sessions, sessions with TLS)."""
    errors, counts = [], []
    start = time.time() + 0.2
    tls_ctx = ssl.create_default_context()
    tls_ctx.check_hostname = False
    tls_ctx.verify_mode = ssl.CERT_NONE

    def worker(w):
        mine = list(range(w, len(items), THREADS))
        sessions = tls_sessions = 0
        try:
            for s, first in enumerate(range(0, len(mine), MESSAGES_PER_SESSION)):
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                    sessions += 1
                    if (s + w) % 2 == 0:
                        c.starttls(context=tls_ctx)
                        tls_sessions += 1
                    for i in mine[first:first + MESSAGES_PER_SESSION]:
                        delay = start + i * LOAD_SECONDS / len(items) - time.time()
                        if delay > 0:
                            time.sleep(delay)
                        rcpts, stream, padding = items[i]
                        refused = c.sendmail("s@sender.test", rcpts,
                                             content(i, rcpts, stream, padding))
                        if refused:
                            errors.append(f"message {i}: refused {refused}")
        except Exception as e:  # reported in the test's thread
            errors.append(f"worker {w}: {e!r}")
        counts.append((sessions, tls_sessions))

    workers = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(THREADS)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(LOAD_SECONDS + 60)
    if any(t.is_alive() for t in workers):
        raise AssertionError("the load did not finish in time")
    if errors:
        raise AssertionError(f"injection failed: {errors[:3]}")
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def panels(dashboard):
    """Every panel that is not a row, rows' nested panels included."""
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def targets(dashboard):
    """(panel title, refId, expr) of every panel target."""
    return [(p["title"], t["refId"], t["expr"]) for p in panels(dashboard)
            for t in p.get("targets", [])]


def grafana_regex(values):
    """A multi-value selection as Grafana's Prometheus data source writes it into a query:
    each value regex-escaped (the backslashes doubled for the PromQL string), then joined."""
    return "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in values) + ")"


def substitute(expr, variables):
    """Grafana's substitution of the built-in and template variables."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "15s")
    expr = expr.replace("$__range", "5m")
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name])
        expr = expr.replace("$" + name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


class DashboardTest(unittest.TestCase):
    counters_checked = False

    @classmethod
    def setUpClass(cls):
        started = time.time()
        cls.dashboard = load_dashboard()
        if not os.path.exists(PROMETHEUS):
            raise RuntimeError("prometheus not installed (Debian package prometheus; see "
                               "tools/install_deps.sh)")
        cls.tmp = tempfile.mkdtemp(prefix="dashboard-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cert, key = make_cert(cls.tmp)
        cls.nsd = NsdServer({"dns.test": ZONE}).start()
        cls.addClassCleanup(cls.nsd.stop)
        cls.sink = Sink(SINK_RULES)
        cls.addClassCleanup(cls.sink.stop)
        cls.tls_sink = Sink(tls=(cert, key))
        cls.addClassCleanup(cls.tls_sink.stop)
        cls.webhook = WebhookReceiver(fail_first=1)
        cls.addClassCleanup(cls.webhook.stop)
        routes = [cls.sink.route(d)
                  for d in ("fast.test", "slow.test", "expire.test", "held.test", "sender.test")]
        cls.mtad = harness.Mtad(
            server={"hostname": "mta.dashboard.test"},
            listener={"tls": "starttls", "tls_cert_file": cert, "tls_key_file": key,
                      "stream_header": "X-Stream"},
            # tls.dns.test and nosuch.dns.test have no route: their MX comes from nsd, and
            # tls.dns.test's MX host listens on smtp_port.
            delivery={"dns_servers": [cls.nsd.address()], "smtp_port": cls.tls_sink.port,
                      "retry_intervals": "1s", "retry_jitter_percent": 0, "routes": routes},
            sections={
                "events": {"webhook": {"url": cls.webhook.url}},
                "egress": {"sources": [{"name": "lo", "address": "127.0.0.1"}],
                           "pools": [{"name": "main", "sources": [{"source": "lo"}]}]},
                "streams": [{"name": "default", "pool": "main"},
                            {"name": "shortlived", "pool": "main", "retry_intervals": "1s",
                             "queue_lifetime": "3s"}],
                "shaping": {"default": {"connect_timeout_s": 5, "idle_timeout_s": 1},
                            "rules": [{"name": "slow", "domain": "slow.test",
                                       "backoff": [{"code": 451, "enhanced": "4.7.1",
                                                    "action": "slow", "rate_factor": 0.5}],
                                       "backoff_restore_interval": "3s"},
                                      # New TLS connections all along the load, so that
                                      # the TLS share has connections in its window, and
                                      # a rate below the offered 3/s: throttling.
                                      {"name": "tls", "domain": "tls.dns.test",
                                       "max_messages_per_connection": 3,
                                       "max_message_rate": "2/s", "rate_burst": 1}]},
            })
        cls.addClassCleanup(shutil.rmtree, cls.mtad.workdir, True)  # after the stop below
        cls.addClassCleanup(cls.mtad.stop, 15)
        cls.prometheus = Prometheus(f"127.0.0.1:{cls.mtad.http_port}")
        cls.addClassCleanup(cls.prometheus.stop)
        cls.mtad.start()
        cls.prometheus.wait_ready()
        # Prometheus starts scraping a few seconds after it is ready (its target discovery
        # sends updates every 5 s); counters must be seen from zero for rate() to count all.
        wait_for(lambda: cls.prometheus.value('up{job="mtad"}') == 1, 20,
                 "prometheus to scrape mtad")
        cls.admin_post("/api/v1/suspend?destination=held.test")

        cls.items = plan()
        cls.sessions, cls.tls_sessions = send_load(cls.mtad.port, cls.items)
        cls.expected = cls.expectations(cls.items)
        want = cls.expected["delivered"]
        wait_for(lambda: cls.delivered_at_sinks() >= want, 40,
                 f"{want} delivered recipients at the sinks (have {cls.delivered_at_sinks()})")
        cls.setup_seconds = time.time() - started

    @classmethod
    def admin_post(cls, path):
        req = urllib.request.Request(f"http://127.0.0.1:{cls.mtad.http_port}{path}", data=b"",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status

    @staticmethod
    def expectations(items):
        def count(pred):
            return sum(1 for rcpts, _, _ in items for r in rcpts if pred(r))
        unknown = count(lambda r: r.startswith("unknown-"))
        nosuch = count(lambda r: r.endswith("@nosuch.dns.test"))
        expire = count(lambda r: r.endswith("@expire.test"))
        held = count(lambda r: r.endswith("@held.test"))
        total = count(lambda r: True)
        # No message has more than one recipient that fails (550, NXDOMAIN or expiry): one
        # DSN for each, delivered to s@sender.test.
        dsns = unknown + nosuch + expire
        return {"received": len(items), "unknown": unknown, "nosuch": nosuch,
                "expire": expire, "held": held,
                "full": count(lambda r: r.startswith("full-")),
                "slow": count(lambda r: r.endswith("@slow.test")),
                "tls": count(lambda r: r.endswith("@tls.dns.test")),
                "dsns": dsns,
                "delivered": total - unknown - nosuch - expire - held + dsns}

    @classmethod
    def delivered_at_sinks(cls):
        return sum(len(m["rcpt_to"]) for s in (cls.sink, cls.tls_sink) for m in s.messages())

    def prom_equals(self, expr, want, timeout=20):
        """Waits until Prometheus has scraped `expr` == want; returns the value."""
        seen = []

        def ok():
            seen.append(self.prometheus.value(expr))
            return seen[-1] == want
        try:
            wait_for(ok, timeout, f"{expr} == {want}")
        except AssertionError:
            self.fail(f"{expr}: Prometheus has {seen[-1]}, expected {want}")
        return want

    def settled(self):
        """Waits (once) until Prometheus has scraped the final counters; checks them."""
        if not DashboardTest.counters_checked:
            self.check_counters()
            DashboardTest.counters_checked = True

    def test_1_counters_equal_what_the_sinks_received(self):
        self.settled()

    def check_counters(self):
        e = self.expected
        sinks = self.sink.messages() + self.tls_sink.messages()
        self.assertEqual(sum(len(m["rcpt_to"]) for m in sinks), e["delivered"])
        self.assertEqual(sum(1 for m in sinks if m["mail_from"] == ""), e["dsns"])
        self.assertEqual(sum(len(m["rcpt_to"]) for m in self.tls_sink.messages()), e["tls"])
        self.assertTrue(all(m["tls"] for m in self.tls_sink.messages()))
        p = self.prom_equals
        p("sum(mta_messages_received_total)", e["received"])
        p("sum(mta_recipients_delivered_total)", e["delivered"])
        p('sum(mta_recipients_delivered_total{destination="tls.dns.test"})', e["tls"])
        p('sum(mta_recipients_delivered_total{destination="sender.test"})', e["dsns"])
        p('sum(mta_recipients_bounced_total{class="invalid_recipient"})', e["unknown"])
        p('sum(mta_recipients_bounced_total{class="dns_failure",destination="nosuch.dns.test"})',
          e["nosuch"])
        p("sum(mta_recipients_bounced_total)", e["unknown"] + e["nosuch"])
        p('sum(mta_recipients_expired_total{stream="shortlived",destination="expire.test"})',
          e["expire"])
        p('sum(mta_recipients_deferred_total{class="mailbox_full",destination="fast.test"})',
          e["full"])
        p('sum(mta_recipients_deferred_total{class="rate_limited",destination="slow.test"})',
          e["slow"])
        p('sum(mta_queue_recipients{destination="held.test",state="suspended"})', e["held"])
        p('sum(mta_admin_actions_total{action="suspend"})', 1)
        p('sum(mta_tls_sessions_total{side="inbound"})', self.tls_sessions)
        p('sum(mta_dns_failures_total{type="mx",reason="nxdomain"})', e["nosuch"])
        sink_conns = self.sink.stats()["connections_total"] + \
            self.tls_sink.stats()["connections_total"]
        p("sum(mta_outbound_connections_total)", sink_conns)
        # The sessions of the load plus harness.Mtad.start's probe.
        p("sum(mta_inbound_connections_total)", self.sessions + 1)
        p('sum(mta_tls_sessions_total{side="outbound",version="TLSv1.3"})',
          self.tls_sink.stats()["connections_total"])
        self.assertGreater(
            self.prometheus.value('sum(mta_backoff_events_total{rule="slow",action="slow"})'), 0)
        self.assertGreater(
            self.prometheus.value('sum(mta_backoff_events_total{rule="tls",action="throttle"})'),
            0)
        # The queue drains to the suspended destination (the gauges follow every 2 s).
        p("sum(mta_queue_recipients)", e["held"])
        p("sum(mta_spool_messages)", e["held"])  # one recipient per held message
        # One event per reception, per outcome (delivered, deferred, bounced, expired), per
        # backoff step (throttling is only counted) and per admin action; none dropped.
        p("sum(mta_events_total) - (sum(mta_messages_received_total)"
          " + sum(mta_recipients_delivered_total) + sum(mta_recipients_deferred_total)"
          " + sum(mta_recipients_bounced_total) + sum(mta_recipients_expired_total)"
          ' + sum(mta_backoff_events_total{action!="throttle"})'
          " + sum(mta_admin_actions_total))", 0)
        p("sum(mta_events_dropped_total)", 0)
        # Every event was shipped to the webhook, after one refused POST.
        seen = []

        def all_shipped():
            seen[:] = [self.prometheus.value("sum(mta_events_total)"),
                       self.prometheus.value("sum(mta_webhook_events_shipped_total)"),
                       self.webhook.acknowledged()]
            return seen[0] == seen[1] == seen[2]
        try:
            wait_for(all_shipped, 20, "the webhook to acknowledge every event")
        except AssertionError:
            self.fail(f"events appended, shipped (mtad), acknowledged (endpoint): {seen}")
        p("sum(mta_webhook_failed_posts_total)", 1)
        p("sum(mta_webhook_backlog_bytes)", 0)

    def run_panels(self, variables, timeout=15):
        """Runs every panel target with `variables`; returns {(title, refId): result}. A
        series needs two scrapes for rate(), so empty results are retried for a while."""
        results, empty = {}, {}
        for title, ref, expr in targets(self.dashboard):
            empty[(title, ref)] = substitute(expr, variables)
        deadline = time.time() + timeout
        while empty:
            for key, expr in list(empty.items()):
                result = self.prometheus.query(expr)
                if result:
                    results[key] = result
                    del empty[key]
            if not empty or time.time() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual({k: v for k, v in empty.items()}, {},
                         "panel targets without data (title, refId): expr")
        return results

    def test_2_every_panel_target_returns_data(self):
        self.settled()
        results = self.run_panels({"datasource": "", "instance": ".*", "stream": ".*",
                                   "destination": ".*"})

        def values(title, ref="A"):
            return {tuple(sorted(m.items())): v for m, v in results[(title, ref)]}

        def one(title, ref="A"):
            [v] = values(title, ref).values()
            return v

        # Quantiles and ratios are numbers, in range.
        for title, ref in [("Delivery latency p99", "A"),
                           ("Delivery latency (injection to delivery)", "C"),
                           ("Delivery attempt duration", "B"), ("Message size", "B"),
                           ("Shard event loop lag", "B")]:
            v = one(title, ref)
            self.assertTrue(math.isfinite(v) and v > 0, (title, ref, v))
        self.assertLess(one("Delivery latency (injection to delivery)", "A"), 10)
        success = one("Delivery success")
        e = self.expected
        self.assertTrue(0.5 < success < 1, success)
        for ref in ("A", "B"):
            share = one("TLS share of connections", ref)
            self.assertTrue(0 < share <= 1, (ref, share))
        by_class = {dict(k)["class"] for k in values("Deferrals/s by class")}
        self.assertTrue({"mailbox_full", "rate_limited"} <= by_class, by_class)
        by_class = {dict(k)["class"] for k in values("Bounces/s by class")}
        self.assertEqual(by_class, {"invalid_recipient", "dns_failure"})
        states = {dict(k)["state"]: v for k, v in values("Queued recipients by state").items()}
        self.assertEqual(set(states), {"ready", "scheduled", "suspended"})
        self.assertEqual(states["suspended"], e["held"])
        oldest = values("Oldest queued message age by destination (top 10)")
        self.assertGreater(oldest[(("destination", "held.test"),)], 0)
        self.assertEqual({dict(k)["type"] for k in values("DNS look-ups/s by type")},
                         {"mx", "address"})
        self.assertIn((("action", "slow"), ("rule", "slow"), ("source", "lo")),
                      values("Backoff steps by rule, source and action"))
        self.assertGreater(values("Rate throttling by rule and source")[
            (("rule", "tls"), ("source", "lo"))], 0)
        self.assertIn((("listener", "test"),), values("Inbound connections/s by listener"))
        # The rate panels agree with the sinks (increase() extrapolates: a loose bound).
        delivered = one("Recipient outcomes/s", "A") * 60
        self.assertTrue(0.75 * e["delivered"] < delivered < 1.25 * e["delivered"],
                        (delivered, e["delivered"]))
        received = one("Received messages/s") * 60
        self.assertTrue(0.75 * e["received"] < received < 1.25 * e["received"],
                        (received, e["received"]))

    def test_3_panels_with_concrete_variable_values(self):
        self.settled()
        self.run_panels({
            "datasource": "", "instance": grafana_regex([self.prometheus.target]),
            "stream": grafana_regex(["default", "shortlived"]),
            "destination": grafana_regex(["fast.test", "slow.test", "expire.test", "held.test"])})

    def test_4_template_variables(self):
        self.settled()
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        got = {}
        for name in ("instance", "stream", "destination"):
            v = variables[name]
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            self.assertIsNotNone(m, query)
            selector = substitute(m.group(1), {"instance": ".*"})
            got[name] = set(self.prometheus.label_values(m.group(2), selector))
            self.assertTrue(v["includeAll"] and v["multi"] and v["allValue"] == ".*", name)
        self.assertEqual(got["instance"], {self.prometheus.target})
        self.assertEqual(got["stream"], {"default", "shortlived"})
        self.assertTrue({"fast.test", "slow.test", "expire.test", "held.test", "tls.dns.test",
                         "nosuch.dns.test", "sender.test"} <= got["destination"],
                        got["destination"])

    def test_5_dashboard_structure(self):
        d = self.dashboard
        self.assertGreaterEqual(d["schemaVersion"], 36)
        ids = [p["id"] for p in d["panels"]] + [p["id"] for p in panels(d)
                                                if p not in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
        occupied = set()
        for p in d["panels"]:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                     for y in range(g["y"], g["y"] + g["h"])}
            self.assertFalse(cells & occupied, f"{p['title']} overlaps another panel")
            occupied |= cells
        for p in panels(d):
            self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${datasource}"},
                             p["title"])
            self.assertTrue(p.get("targets"), p["title"])
            refs = [t["refId"] for t in p["targets"]]
            self.assertEqual(len(refs), len(set(refs)), p["title"])
            for t in p["targets"]:
                self.assertEqual(t["datasource"], p["datasource"], p["title"])
                # Every range vector uses Grafana's $__rate_interval (at least 4 scrapes).
                for window in re.findall(r"\[([^\]]*)\]", t["expr"]):
                    self.assertEqual(window, "$__rate_interval", (p["title"], t["expr"]))

    def test_6_every_exported_family_is_on_the_dashboard(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mtad.http_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        self.assertGreater(len(families), 20)
        exprs = " ".join(expr for _, _, expr in targets(self.dashboard))
        used = set(re.findall(r"\b(mta_[a-z0-9_]+)", exprs))
        used |= {re.sub(r"_(bucket|sum|count)$", "", u) for u in used}
        self.assertEqual(families - used, set(), "families no panel shows")

    def test_7_runtime(self):
        # Setup (processes, load, delivery) must leave the suite well inside its budget.
        self.assertLess(self.setup_seconds, 60, self.setup_seconds)


if __name__ == "__main__":
    harness.main()
