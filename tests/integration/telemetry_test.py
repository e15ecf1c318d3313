"""Telemetry end to end: a real mtad delivering to real SMTP servers (capture_sink.py on
127.0.0.x, reached through delivery.routes) is checked against what those servers saw.

- LoadTest: 300 messages from 4 smtplib threads, with recipients the sink refuses with
  550 5.1.1 and 452 4.2.2. Every counter in /metrics must equal what the sink counted
  (exactly), the exposition must pass `promtool check metrics`, every event log line must
  match one reception, delivery, bounce or deferral, and each DSN carries X-Bounce-Class.
- WebhookTest: the webhook's backlog (the event files) survives a receiver that is down,
  and a restart of mtad while it is down.
- AdminApiTest: queue and message views, suspend/resume (kept across reload and restart),
  retry now, bounce with a reason, reload; TokenTest: the bearer token for /api/ and the start-up check for http.address.

Nothing here uses DNS: delivery.routes name the sinks' addresses and ports.
"""

import base64
import collections
import email
import email.policy
import glob
import http.server
import json
import os
import re
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

import harness

PROMTOOL = "/usr/bin/promtool"
SENDER = "s@sender.test"
# Destination sink: these recipients are refused, everything else is accepted.
REFUSING = {"rules": [
    {"command": "RCPT", "match": "^<unknown", "reply": "550 5.1.1 No such user here"},
    {"command": "RCPT", "match": "^<full", "reply": "452 4.2.2 Mailbox full"},
]}
# Retries are an hour away: a retry seen during the test was caused by the test.
DELIVERY = {"retry_intervals": "1h", "retry_jitter_percent": 0}
# Outbound connections idle briefly, so that a stopped mtad leaves the sinks quiet quickly.
SHAPING = {"default": {"connect_timeout_s": 5, "idle_timeout_s": 1}}


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# ---- SMTP peers -------------------------------------------------------------------------


class Sink(harness.CaptureSink):
    """capture_sink.py with --record-refusals, listening on one free port per address."""

    def __init__(self, addresses, script=None):
        super().__init__(addresses, script, ["--record-refusals"], prefix="telemetry-sink-")

    def route(self, domain, address):
        return {"domain": domain, "host": address, "port": self.ports[address], "tls": "none"}

    def messages(self, address=None):
        return [m for m in self.records("message") if address in (None, m["local_ip"])]

    def refusals(self, reply_prefix):
        return [r for r in self.records("refusal") if r["reply"].startswith(reply_prefix)]


def content_of(record):
    return base64.b64decode(record["data_b64"])


def queue_id_of(record):
    """The queue id mtad gave a message: from its Received: field ("... id <qid>;") or, for
    the DSNs mtad writes itself (no Received:), from their Message-ID <qid@hostname>."""
    head = content_of(record).split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"^Received: .*?\bid ([0-9a-z]+);", head, re.M | re.S)
    if m is None:
        m = re.search(rb"^Message-ID: <([0-9a-z]+)@", head, re.M | re.I)
    assert m is not None, head[:300]
    return m.group(1).decode()


def message_text(subject):
    return (f"From: {SENDER}\r\nSubject: {subject}\r\n"
            f"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\nBody of {subject}.\r\n").encode()


def send_messages(port, messages, threads=1, timeout=60):
    """Sends each (recipients, content) over `threads` smtplib connections (one per thread,
    several messages each); returns the queue ids in the order of `messages`."""
    ids = [None] * len(messages)
    errors = []

    def worker(indexes):
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.telemetry.test",
                              timeout=30) as c:
                c.ehlo()
                for i in indexes:
                    rcpts, content = messages[i]
                    code, text = c.mail(SENDER)
                    assert code == 250, (code, text)
                    for r in rcpts:
                        code, text = c.rcpt(r)
                        assert code == 250, (r, code, text)
                    code, text = c.data(content)
                    assert code == 250, (code, text)
                    ids[i] = text.decode().split()[-1]
        except Exception as e:  # reported below, in the test's thread
            errors.append(repr(e))

    workers = [threading.Thread(target=worker, args=(range(i, len(messages), threads),),
                                daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    deadline = time.time() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.time()))
    if any(w.is_alive() for w in workers):
        raise AssertionError(f"sending did not finish within {timeout} s")
    if errors:
        raise AssertionError(f"sending failed: {errors[:3]}")
    return ids


# ---- HTTP: /metrics and the admin API ---------------------------------------------------

# No proxy from the environment may come between us and loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(port, method, path, token=None, **query):
    """Returns (status, body text); HTTP errors are returned, not raised."""
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def api(mtad, method, path, token=None, expect=200, **query):
    status, body = http_request(mtad.http_port, method, "/api/v1/" + path, token, **query)
    assert status == expect, (method, path, query, status, body)
    return json.loads(body)


def scrape(mtad):
    status, text = http_request(mtad.http_port, "GET", "/metrics")
    assert status == 200, (status, text)
    return text


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)( -?[0-9]+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_exposition(text):
    """Prometheus text format 0.0.4 -> {"types": {family: type}, "samples": [(name, labels,
    value)]}. Strict enough to fail on malformed lines and samples of undeclared families."""
    types, samples = {}, []
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            assert family not in types, f"family {family} declared twice"
            types[family] = kind
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line {line!r}"
        name, label_text, value = m.group(1), m.group(2) or "", m.group(3)
        labels, pos = {}, 0
        while pos < len(label_text):
            lm = _LABEL.match(label_text, pos)
            assert lm, f"malformed labels in {line!r}"
            labels[lm.group(1)] = re.sub(r'\\(.)', lambda x: {"n": "\n"}.get(x.group(1),
                                                                             x.group(1)),
                                         lm.group(2))
            pos = lm.end()
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                family = name[:-len(suffix)]
        assert family in types, f"sample {name} without a # TYPE line"
        samples.append((name, labels, float(value)))
    return {"types": types, "samples": samples}


def total(metrics, name, **match):
    """Sum of the samples of `name` whose labels include `match`."""
    return sum(v for n, labels, v in metrics["samples"]
               if n == name and all(labels.get(k) == w for k, w in match.items()))


def series(metrics, name):
    return [(labels, v) for n, labels, v in metrics["samples"] if n == name]


def metric(mtad, name, **match):
    return total(parse_exposition(scrape(mtad)), name, **match)


# ---- The event log ----------------------------------------------------------------------


def event_lines(directory):
    """Every line of every event log file (stable names, oldest first; events.jsonl is a
    link to the live one), each checked to be one complete JSON object."""
    lines = []
    for path in sorted(glob.glob(os.path.join(directory, "events-*.jsonl"))):
        with open(path, "rb") as f:
            data = f.read()
        assert not data or data.endswith(b"\n"), f"{path} ends in a partial line"
        for raw in data.split(b"\n")[:-1]:
            try:
                event = json.loads(raw)
            except ValueError as e:
                raise AssertionError(f"{path}: not JSON: {raw[:200]!r}: {e}") from e
            assert isinstance(event, dict) and event.get("type"), raw[:200]
            lines.append(event)
    return lines


def canonical(event):
    return json.dumps(event, sort_keys=True)


def parse_dsn(record):
    return email.message_from_bytes(content_of(record), policy=email.policy.default)


def delivery_status(dsn):
    """The message/delivery-status part's text."""
    for part in dsn.walk():
        if part.get_content_type() == "message/delivery-status":
            return part.as_string()
    raise AssertionError("no message/delivery-status part")


# ---- 1-3: counters, event log and DSNs after a load ---------------------------------------


class LoadTest(unittest.TestCase):
    """One mtad, one load; each test checks one view of it (all taken once it settled)."""

    MESSAGES = 300
    THREADS = 4

    @classmethod
    def setUpClass(cls):
        cls.sink = Sink(["127.0.0.2", "127.0.0.3"], REFUSING)
        cls.events_dir = tempfile.mkdtemp(prefix="telemetry-events-")
        cls.mtad = harness.Mtad(
            server={"hostname": "mta.test"},
            delivery=dict(DELIVERY, routes=[cls.sink.route("*", "127.0.0.2"),
                                            cls.sink.route("sender.test", "127.0.0.3")]),
            sections={"shaping": SHAPING, "events": {"directory": cls.events_dir}})
        try:
            cls.mtad.start()
            cls._load()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "mtad", None) is not None:
            cls.mtad.stop()
        cls.sink.stop()

    @classmethod
    def _load(cls):
        started = time.time()
        messages, unknown, full = [], [], []
        for i in range(cls.MESSAGES):
            d = [f"d{(i + k) % 3}.test" for k in range(3)]
            rcpts = [f"r{i}@{d[0]}", f"s{i}@{d[1]}"]
            if i % 4 == 0:
                rcpts.append(f"t{i}@{d[0]}")  # two of one domain: one transaction
            if i % 10 == 3:
                rcpts.append(f"unknown{i}@{d[i % 2]}")
                unknown.append(i)
            if i % 15 == 7:
                rcpts.append(f"full{i}@{d[2]}")
                full.append(i)
            messages.append((rcpts, message_text(f"load {i}")))
        ids = send_messages(cls.mtad.port, messages, threads=cls.THREADS)
        cls.sent = {qid: rcpts for qid, (rcpts, _) in zip(ids, messages)}
        cls.unknown = {(ids[i], r) for i in unknown for r in messages[i][0]
                       if r.startswith("unknown")}
        cls.full = {(ids[i], r) for i in full for r in messages[i][0] if r.startswith("full")}
        cls.accepted = sorted((qid, r) for qid, rcpts in cls.sent.items() for r in rcpts
                              if not r.startswith(("unknown", "full")))
        sink = cls.sink
        wait_for(lambda: sum(len(m["rcpt_to"]) for m in sink.messages("127.0.0.2"))
                 >= len(cls.accepted), 40, f"{len(cls.accepted)} recipients at the sink")
        wait_for(lambda: len(sink.messages("127.0.0.3")) >= len(cls.unknown), 20,
                 f"{len(cls.unknown)} DSNs")
        wait_for(lambda: len(sink.refusals("452")) >= len(cls.full), 10, "the 452 refusals")
        # Settled: the counters have caught up with the sinks, and the periodic gauges show
        # only the deferred recipients waiting.
        expected_delivered = len(cls.accepted) + len(cls.unknown)  # DSNs are delivered too
        wait_for(lambda: metric(cls.mtad, "mta_recipients_delivered_total")
                 >= expected_delivered, 10, "the delivered counter")
        wait_for(lambda: (metric(cls.mtad, "mta_queue_recipients", state="scheduled")
                          == len(cls.full) and
                          metric(cls.mtad, "mta_queue_recipients", state="ready") == 0 and
                          metric(cls.mtad, "mta_inbound_connections") == 0), 10,
                 "the queue gauges to settle")
        time.sleep(0.5)  # anything counted twice would show up by now
        cls.text = scrape(cls.mtad)
        cls.metrics = parse_exposition(cls.text)
        # Every appended line is in the files once the writer has flushed (200 ms).
        appended = total(cls.metrics, "mta_events_total")
        cls.events = wait_for(lambda: (lambda e: e if len(e) >= appended else None)(
            event_lines(cls.events_dir)), 5, f"{appended} event lines in the files")
        print(f"load: {cls.MESSAGES} messages, {len(cls.accepted)} delivered, "
              f"{len(cls.unknown)} bounced, {len(cls.full)} deferred, settled in "
              f"{time.time() - started:.1f} s", file=sys.stderr)

    def test_counters_equal_what_the_sinks_counted(self):
        m = self.metrics
        dest = self.sink.messages("127.0.0.2")
        dsns = self.sink.messages("127.0.0.3")
        accepted_at_sink = sum(len(x["rcpt_to"]) for x in dest + dsns)
        self.assertEqual(sorted((queue_id_of(x), r) for x in dest for r in x["rcpt_to"]),
                         self.accepted)
        refused_550 = self.sink.refusals("550 5.1.1")
        refused_452 = self.sink.refusals("452 4.2.2")
        self.assertEqual(len(refused_550), len(self.unknown))
        self.assertEqual(len(refused_452), len(self.full))

        self.assertEqual(total(m, "mta_recipients_delivered_total"), accepted_at_sink)
        self.assertEqual(total(m, "mta_recipients_delivered_total", destination="sender.test"),
                         len(dsns))
        self.assertEqual(total(m, "mta_recipients_bounced_total", **{"class":
                                                                     "invalid_recipient"}),
                         len(refused_550))
        self.assertEqual(total(m, "mta_recipients_bounced_total"), len(refused_550))
        self.assertEqual(total(m, "mta_recipients_deferred_total", **{"class": "mailbox_full"}),
                         len(refused_452))
        self.assertEqual(total(m, "mta_recipients_deferred_total"), len(refused_452))
        self.assertEqual(total(m, "mta_recipients_expired_total"), 0)
        # Per destination, as the sink saw the recipients' domains.
        by_domain = collections.Counter(r.split("@")[1] for x in dest for r in x["rcpt_to"])
        for domain, n in by_domain.items():
            self.assertEqual(total(m, "mta_recipients_delivered_total", destination=domain), n,
                             domain)

        self.assertEqual(total(m, "mta_messages_received_total"), self.MESSAGES)
        self.assertEqual(total(m, "mta_messages_received_total", listener="test",
                               stream="default"), self.MESSAGES)
        self.assertEqual(total(m, "mta_message_size_bytes_count"), self.MESSAGES)
        # The harness's readiness probe (greeting, QUIT) is one more connection.
        self.assertEqual(total(m, "mta_inbound_connections_total"), self.THREADS + 1)
        self.assertEqual(total(m, "mta_inbound_connections"), 0)
        self.assertEqual(total(m, "mta_outbound_connections_total"),
                         self.sink.stats()["connections_total"])

        # Outbound replies: the sinks' final answer per recipient.
        self.assertEqual(total(m, "mta_smtp_replies_total", side="outbound", **{"class": "2xx"}),
                         accepted_at_sink)
        self.assertEqual(total(m, "mta_smtp_replies_total", side="outbound", **{"class": "4xx"}),
                         len(refused_452))
        self.assertEqual(total(m, "mta_smtp_replies_total", side="outbound", **{"class": "5xx"}),
                         len(refused_550))
        # Inbound replies: per connection 220, 250 (EHLO), 221; per message 250 (MAIL), 250
        # per RCPT, 354 and the final 250. The probe got 220 and 221.
        rcpts = sum(len(r) for r in self.sent.values())
        self.assertEqual(total(m, "mta_smtp_replies_total", side="inbound", **{"class": "2xx"}),
                         3 * self.THREADS + 2 + 2 * self.MESSAGES + rcpts)
        self.assertEqual(total(m, "mta_smtp_replies_total", side="inbound", **{"class": "3xx"}),
                         self.MESSAGES)
        self.assertEqual(total(m, "mta_smtp_replies_total", side="inbound", **{"class": "4xx"})
                         + total(m, "mta_smtp_replies_total", side="inbound",
                                 **{"class": "5xx"}), 0)

        # Histograms: one latency per delivered recipient, one duration per attempt.
        self.assertEqual(total(m, "mta_delivery_latency_seconds_count"), accepted_at_sink)
        self.assertEqual(total(m, "mta_delivery_attempt_duration_seconds_count"),
                         accepted_at_sink + len(refused_550) + len(refused_452))
        # Gauges: only the deferred recipients (and their messages) wait.
        self.assertEqual(total(m, "mta_queue_recipients", state="scheduled"), len(self.full))
        self.assertEqual(total(m, "mta_queue_recipients", state="ready"), 0)
        self.assertEqual(total(m, "mta_queue_recipients", state="suspended"), 0)
        self.assertEqual(total(m, "mta_spool_messages"), len({q for q, _ in self.full}))
        self.assertGreater(total(m, "mta_spool_bytes"), 0)
        self.assertEqual(total(m, "mta_events_dropped_total"), 0)
        self.assertEqual(total(m, "mta_events_total"), len(self.events))
        self.assertEqual(total(m, "mta_dns_lookups_total"), 0)  # routes bypass DNS
        queue = api(self.mtad, "GET", "queue")
        self.assertEqual((queue["ready"], queue["scheduled"], queue["suspended"]),
                         (0, len(self.full), 0))

    def test_exposition_is_well_formed(self):
        m = self.metrics
        for family in ("mta_messages_received_total", "mta_recipients_delivered_total",
                       "mta_recipients_deferred_total", "mta_recipients_bounced_total",
                       "mta_recipients_expired_total", "mta_smtp_replies_total",
                       "mta_inbound_connections_total", "mta_outbound_connections_total",
                       "mta_tls_sessions_total", "mta_dns_lookups_total",
                       "mta_dns_failures_total", "mta_backoff_events_total",
                       "mta_events_total", "mta_events_dropped_total",
                       "mta_admin_actions_total"):
            self.assertEqual(m["types"].get(family), "counter", family)
        for family in ("mta_inbound_connections", "mta_outbound_connections",
                       "mta_spool_messages", "mta_spool_bytes", "mta_queue_recipients",
                       "mta_queue_oldest_age_seconds"):
            self.assertEqual(m["types"].get(family), "gauge", family)
        for family in ("mta_message_size_bytes", "mta_shard_loop_lag_seconds",
                       "mta_delivery_latency_seconds", "mta_delivery_attempt_duration_seconds"):
            self.assertEqual(m["types"].get(family), "histogram", family)
            # Buckets are cumulative and +Inf equals _count, per series.
            groups = collections.defaultdict(list)
            for labels, v in series(m, family + "_bucket"):
                key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
                groups[key].append((float(labels["le"]), v))
            self.assertTrue(groups, family)
            for key, buckets in groups.items():
                counts = [v for _, v in sorted(buckets)]
                self.assertEqual(counts, sorted(counts), (family, key))
                self.assertEqual(sorted(buckets)[-1][0], float("inf"))
                self.assertEqual(counts[-1], total(m, family + "_count", **dict(key)))
        self.assertEqual({l["shard"] for l, _ in series(m, "mta_shard_loop_lag_seconds_count")},
                         {"0", "1"})
        self.assertTrue(os.access(PROMTOOL, os.X_OK), f"{PROMTOOL} (Debian package prometheus)")
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=self.text.encode(),
                               capture_output=True, timeout=30)
        self.assertEqual((check.returncode, check.stdout + check.stderr), (0, b""))

    def test_event_lines_match_deliveries_one_to_one(self):
        events = self.events
        by_type = collections.defaultdict(list)
        for e in events:
            by_type[e["type"]].append(e)
        self.assertEqual(set(by_type), {"reception", "delivery", "bounce", "deferral"})

        # One reception per accepted message, with its envelope.
        receptions = by_type["reception"]
        self.assertEqual(sorted(e["id"] for e in receptions), sorted(self.sent))
        for e in receptions:
            self.assertEqual(e["recipients"], self.sent[e["id"]], e)
            self.assertEqual((e["sender"], e["listener"], e["stream"], e["client_ip"],
                              e["helo"]),
                             (SENDER, "test", "default", "127.0.0.1", "client.telemetry.test"))
        self.assertEqual(sum(e["size"] for e in receptions),
                         total(self.metrics, "mta_message_size_bytes_sum"))

        # One delivery line per recipient a sink accepted, with the message's queue id.
        got = collections.Counter((queue_id_of(x), r) for x in self.sink.messages()
                                  for r in x["rcpt_to"])
        self.assertEqual(max(got.values()), 1, "a sink got a recipient twice")
        lines = collections.Counter((e["id"], e["recipient"]) for e in by_type["delivery"])
        self.assertEqual(lines, got)
        for e in by_type["delivery"]:
            self.assertEqual((e["code"], e["attempt"]), (250, 1), e)
        # DSNs: from <>, to the original sender, not received through a listener.
        dsn_lines = [e for e in by_type["delivery"] if e["sender"] == ""]
        self.assertEqual(len(dsn_lines), len(self.unknown))
        self.assertEqual({e["recipient"] for e in dsn_lines}, {SENDER})
        self.assertFalse({e["id"] for e in dsn_lines} & set(self.sent))
        self.assertEqual({e["id"] for e in by_type["delivery"] if e["sender"] == SENDER},
                         {q for q, _ in self.accepted})

        bounces = by_type["bounce"]
        self.assertEqual(sorted((e["id"], e["recipient"]) for e in bounces), sorted(self.unknown))
        for e in bounces:
            self.assertEqual((e["class"], e["code"], e["enhanced"]),
                             ("invalid_recipient", 550, "5.1.1"), e)
        deferrals = by_type["deferral"]
        self.assertEqual(sorted((e["id"], e["recipient"]) for e in deferrals), sorted(self.full))
        for e in deferrals:
            self.assertEqual((e["class"], e["code"], e["enhanced"]),
                             ("mailbox_full", 452, "4.2.2"), e)
        # A recipient's outcome comes after its message's reception.
        received_at = {e["id"]: e["time"] for e in receptions}
        for e in bounces + deferrals + by_type["delivery"]:
            if e["id"] in received_at:
                self.assertGreaterEqual(e["time"], received_at[e["id"]], e)

    def test_dsn_names_the_bounce_class(self):
        dsns = self.sink.messages("127.0.0.3")
        reported = []
        for rec in dsns:
            self.assertEqual((rec["mail_from"], rec["rcpt_to"]), ("", [SENDER]))
            dsn = parse_dsn(rec)
            self.assertEqual(dsn.get_content_type(), "multipart/report")
            status = delivery_status(dsn)
            self.assertIn("X-Bounce-Class: invalid_recipient", status)
            self.assertIn("Status: 5.1.1", status)
            self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 No such user here", status)
            [final] = re.findall(r"Final-Recipient: rfc822; (\S+)", status)
            [original] = [p for p in dsn.walk() if p.get_content_type() == "message/rfc822"]
            qid = re.search(r"\bid ([0-9a-z]+);", original.as_string()).group(1)
            reported.append((qid, final))
        self.assertEqual(sorted(reported), sorted(self.unknown))


# ---- 4: the webhook ---------------------------------------------------------------------


class Receiver:
    """An HTTP endpoint (http.server) that records the JSON arrays POSTed to it. It can be
    stopped (port closed: connections are refused) and started again on the same port."""

    def __init__(self, token):
        self.token = token
        self.port = harness.free_port()
        self.lock = threading.Lock()
        self.events = []  # every event received, duplicates included
        self.posts = 0
        self.unauthorized = 0
        self.server = None
        self.thread = None

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Authorization") != f"Bearer {receiver.token}":
                    with receiver.lock:
                        receiver.unauthorized += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                batch = json.loads(body)
                assert isinstance(batch, list)
                with receiver.lock:
                    receiver.events.extend(batch)
                    receiver.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        # HTTPServer sets SO_REUSEADDR: the port can be bound again right after a stop.
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)
            self.server = None

    def received(self):
        with self.lock:
            return list(self.events)


class WebhookTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="telemetry-webhook-")
        token_file = os.path.join(self.tmp, "webhook.token")
        with open(token_file, "w") as f:
            f.write("hook-secret-1\n")
        self.receiver = Receiver("hook-secret-1")
        self.receiver.start()
        self.addCleanup(self.receiver.stop)
        self.sink = Sink(["127.0.0.2"])
        self.addCleanup(self.sink.stop)
        self.events_dir = os.path.join(self.tmp, "events")
        self.mtad = harness.Mtad(
            server={"hostname": "mta.test"},
            delivery=dict(DELIVERY, routes=[self.sink.route("*", "127.0.0.2")]),
            sections={"shaping": SHAPING, "events": {
                "directory": self.events_dir,
                "webhook": {"url": f"http://127.0.0.1:{self.receiver.port}/hook",
                            "token_file": token_file}}})
        self.mtad.start()
        self.addCleanup(self.mtad.stop)

    def send(self, tag, n):
        """n one-recipient messages; waits until the sink has them. Returns their ids."""
        before = len(self.sink.messages())
        ids = send_messages(self.mtad.port, [([f"{tag}{i}@hook.test"], message_text(tag))
                                             for i in range(n)])
        wait_for(lambda: len(self.sink.messages()) >= before + n, 20, f"{n} {tag} deliveries")
        return ids

    def logged(self):
        return {canonical(e) for e in event_lines(self.events_dir)}

    def wait_shipped(self, timeout, what):
        """Waits until every event in the files has reached the receiver."""
        def done():
            missing = self.logged() - {canonical(e) for e in self.receiver.received()}
            return not missing
        wait_for(done, timeout, what)

    def log_bytes(self):
        return sum(os.path.getsize(p)
                   for p in glob.glob(os.path.join(self.events_dir, "events-*.jsonl")))

    def wait_backlog(self, unshipped_bytes):
        """Waits until mtad, failing to POST, reports exactly `unshipped_bytes` as its backlog
        (the gauge is refreshed after each failed POST)."""
        wait_for(lambda: metric(self.mtad, "mta_webhook_failed_posts_total") >= 1 and
                 metric(self.mtad, "mta_webhook_backlog_bytes") == unshipped_bytes, 10,
                 f"a failed POST and a backlog of {unshipped_bytes} bytes")
        return unshipped_bytes

    def wait_logged(self, ids):
        """Waits until the reception and delivery lines of `ids` are in the files."""
        want = {(kind, qid) for qid in ids for kind in ("reception", "delivery")}
        wait_for(lambda: want <= {(e["type"], e.get("id")) for e in event_lines(self.events_dir)},
                 5, "the event lines of the messages just sent")

    def test_backlog_survives_receiver_and_mtad_restarts(self):
        first = self.send("first", 5)
        self.wait_shipped(10, "the first events")
        # Counted once the cursor is durable, just after the receiver's answer.
        shipped = wait_for(lambda: metric(self.mtad, "mta_webhook_events_shipped_total") >= 10
                           and metric(self.mtad, "mta_webhook_events_shipped_total"), 5,
                           "10 events (5 receptions, 5 deliveries) counted as shipped")
        wait_for(lambda: metric(self.mtad, "mta_webhook_backlog_bytes") == 0, 5, "no backlog")

        # The receiver goes away: events wait in the files. Everything before was shipped,
        # so the backlog is what the log grows by from here on.
        self.receiver.stop()
        count = len(self.receiver.received())
        shipped_bytes = self.log_bytes()
        second = self.send("second", 20)
        self.wait_logged(second)
        backlog = self.wait_backlog(self.log_bytes() - shipped_bytes)
        self.assertGreater(backlog, 0)
        self.assertEqual(metric(self.mtad, "mta_webhook_events_shipped_total"), shipped)
        self.assertEqual(len(self.receiver.received()), count)
        started = time.time()
        self.receiver.start()
        self.wait_shipped(20, "the backlog after the receiver came back")
        print(f"webhook: backlog of {backlog:.0f} bytes shipped "
              f"{time.time() - started:.1f} s after the receiver came back", file=sys.stderr)
        received = self.receiver.received()
        for qid in first + second:
            for kind in ("reception", "delivery"):
                self.assertTrue(any(e["id"] == qid and e["type"] == kind for e in received),
                                (qid, kind))
        wait_for(lambda: metric(self.mtad, "mta_webhook_backlog_bytes") == 0, 10, "no backlog")

        # Down again, and mtad restarts meanwhile (same spool and event directory).
        self.receiver.stop()
        shipped_bytes = self.log_bytes()
        third = self.send("third", 10)
        self.wait_logged(third)
        self.mtad.stop()
        self.mtad.start()
        # The new process finds the cursor where the old one left it.
        backlog = self.wait_backlog(self.log_bytes() - shipped_bytes)
        self.assertGreater(backlog, 0)
        fourth = self.send("fourth", 3)
        self.receiver.start()
        self.wait_shipped(20, "the events from before and after mtad's restart")
        received = self.receiver.received()
        for qid in third + fourth:
            for kind in ("reception", "delivery"):
                self.assertTrue(any(e["id"] == qid and e["type"] == kind for e in received),
                                (qid, kind))
        # Nothing invented: every event received is one of the log's lines.
        self.assertLessEqual({canonical(e) for e in received}, self.logged())
        self.assertEqual(self.receiver.unauthorized, 0)
        self.assertEqual(len(self.logged()), 2 * (5 + 20 + 10 + 3))


# ---- 5: the admin API -------------------------------------------------------------------

ADMIN_RULES = {"rules": [
    # First attempt deferred (per recipient), then accepted: for retry-now.
    {"command": "RCPT", "match": "^<later@", "reply": "452 4.2.2 Mailbox full", "times": 1},
    # Never accepted: waits until an administrator bounces it.
    {"command": "RCPT", "match": "^<stuck@", "reply": "451 4.3.0 Not now"},
]}


class AdminApiTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.sink = Sink(["127.0.0.2", "127.0.0.3"], ADMIN_RULES)
        cls.events_dir = tempfile.mkdtemp(prefix="telemetry-admin-events-")
        cls.mtad = harness.Mtad(
            server={"hostname": "mta.test"},
            delivery=dict(DELIVERY, routes=[cls.sink.route("*", "127.0.0.2"),
                                            cls.sink.route("sender.test", "127.0.0.3")]),
            sections={"shaping": SHAPING, "events": {"directory": cls.events_dir}})
        try:
            cls.mtad.start()
        except BaseException:
            cls.sink.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.mtad.stop()
        cls.sink.stop()

    def send(self, rcpts, subject):
        [qid] = send_messages(self.mtad.port, [(rcpts, message_text(subject))])
        return qid

    def delivered(self, rcpt):
        return [m for m in self.sink.messages("127.0.0.2") if rcpt in m["rcpt_to"]]

    def events(self, **match):
        return [e for e in event_lines(self.events_dir)
                if all(e.get(k) == v for k, v in match.items())]

    def test_queue_and_message_views_then_retry_now(self):
        qid = self.send(["later@defer.test", "now@defer.test"], "retry me")
        wait_for(lambda: self.delivered("now@defer.test"), 10, "the accepted recipient")
        wait_for(lambda: self.events(type="deferral", id=qid), 5, "the deferral line")

        queue = api(self.mtad, "GET", "queue")
        [row] = [r for r in queue["destinations"] if r["destination"] == "defer.test"]
        self.assertEqual((row["stream"], row["ready"], row["scheduled"], row["suspended"]),
                         ("default", 0, 1, 0))
        self.assertGreaterEqual(queue["scheduled"], 1)

        msg = api(self.mtad, "GET", f"messages/{qid}")
        self.assertEqual((msg["id"], msg["sender"], msg["stream"]), (qid, SENDER, "default"))
        [rcpt] = msg["recipients"]  # the delivered one no longer waits
        self.assertEqual((rcpt["address"], rcpt["destination"], rcpt["state"],
                          rcpt["attempts"]), ("later@defer.test", "defer.test", "scheduled", 1))
        self.assertTrue(rcpt["last_error"].startswith("452 4.2.2"), rcpt)
        self.assertIn("next_attempt", rcpt)
        listed = api(self.mtad, "GET", "messages", domain="defer.test")["messages"]
        self.assertIn(qid, [m["id"] for m in listed])

        # The retry is an hour away; retry?domain= runs it now.
        self.assertEqual(api(self.mtad, "POST", "retry", domain="defer.test"),
                         {"recipients": 1})
        retried = time.time()
        wait_for(lambda: self.delivered("later@defer.test"), 10, "the retried recipient")
        print(f"admin: retried delivery {time.time() - retried:.2f} s after retry?domain=",
              file=sys.stderr)
        [line] = wait_for(lambda: self.events(type="delivery", id=qid,
                                              recipient="later@defer.test"), 5,
                          "the delivery line of the retried recipient")
        self.assertEqual(line["attempt"], 2)
        api(self.mtad, "GET", f"messages/{qid}", expect=404)
        wait_for(lambda: self.events(type="admin", action="retry", target="domain:defer.test"),
                 5, "the admin line for the retry")

    def test_bad_admin_input_gets_a_clear_error(self):
        port = self.mtad.http_port
        for path in ("/api/v1/suspend?destination=%FF", "/api/v1/suspend?destination=a%20b",
                     "/api/v1/suspend?destination=x&source=y", "/api/v1/suspend"):
            status, body = http_request(port, "POST", path)
            self.assertEqual(status, 400, (path, body))
            self.assertIn("error", json.loads(body))
        self.assertEqual(http_request(port, "POST", "/api/v1/suspend?source=nope")[0], 404)
        self.assertEqual(http_request(port, "POST", "/api/v1/bounce?reason=x")[0], 400)
        self.assertEqual(http_request(port, "GET", "/api/v1/messages?limit=-1")[0], 400)
        self.assertEqual(http_request(port, "DELETE", "/api/v1/queue")[0], 405)
        self.assertEqual(http_request(port, "GET", "/api/v1/nope")[0], 404)
        self.assertEqual(api(self.mtad, "GET", "suspended")["destinations"], [])
        self.assertEqual(http_request(port, "GET", "/healthz")[0], 200)  # still alive

    def test_suspend_holds_mail_and_resume_releases_it(self):
        suspended = api(self.mtad, "POST", "suspend", destination="hold.test")
        self.assertIn("hold.test", suspended["destinations"])
        self.assertIn("hold.test", api(self.mtad, "GET", "suspended")["destinations"])
        qid = self.send(["a@hold.test", "b@hold.test"], "hold me")

        def held():
            rows = [r for r in api(self.mtad, "GET", "queue")["destinations"]
                    if r["destination"] == "hold.test"]
            return rows and rows[0]["suspended"] == 2 and rows[0]["ready"] == 0
        wait_for(held, 10, "hold.test's mail to show as suspended")
        msg = api(self.mtad, "GET", f"messages/{qid}")
        self.assertEqual(sorted((r["address"], r["state"]) for r in msg["recipients"]),
                         [("a@hold.test", "suspended"), ("b@hold.test", "suspended")])
        wait_for(lambda: metric(self.mtad, "mta_queue_recipients", destination="hold.test",
                                state="suspended") == 2, 10, "the suspended gauge")
        # An admin suspension survives a reload (POST /reload = SIGHUP).
        reloads = self.mtad.log().count("SIGHUP: reloaded")
        status, body = http_request(self.mtad.http_port, "POST", "/api/v1/reload")
        self.assertEqual(status, 202, body)
        wait_for(lambda: self.mtad.log().count("SIGHUP: reloaded") > reloads, 10, "the reload")
        self.assertIn("hold.test", api(self.mtad, "GET", "suspended")["destinations"])
        # ... and a restart (kept in <spool>-admin-suspensions.json): the recovered mail
        # stays held from the first moment.
        self.mtad.stop()
        self.mtad.start()
        self.assertIn("hold.test", api(self.mtad, "GET", "suspended")["destinations"])
        wait_for(held, 10, "the recovered mail to show as suspended")
        time.sleep(1.0)
        self.assertEqual(self.delivered("a@hold.test") + self.delivered("b@hold.test"), [])
        self.assertEqual(self.events(type="delivery", id=qid), [])

        resumed = api(self.mtad, "POST", "resume", destination="hold.test")
        self.assertNotIn("hold.test", resumed["destinations"])
        wait_for(lambda: self.delivered("a@hold.test") and self.delivered("b@hold.test"), 10,
                 "delivery after resume")
        for action in ("suspend", "resume"):
            wait_for(lambda: self.events(type="admin", action=action,
                                         target="destination:hold.test"), 5,
                     f"the admin line for {action}")
        # The counters started again with the restart (the suspend was before it).
        self.assertGreaterEqual(metric(self.mtad, "mta_admin_actions_total", action="resume"), 1)
        wait_for(lambda: self.events(type="admin", action="reload"), 5, "the reload line")

    def test_bounce_cancels_a_waiting_message_with_a_dsn(self):
        qid = self.send(["stuck@stuck.test"], "bounce me")
        wait_for(lambda: self.events(type="deferral", id=qid), 10, "the first deferral")
        self.assertEqual(api(self.mtad, "GET", f"messages/{qid}")["recipients"][0]["state"],
                         "scheduled")
        reason = "cleanup-by-telemetry-test-42"
        self.assertEqual(api(self.mtad, "POST", "bounce", id=qid, reason=reason),
                         {"recipients": 1})

        def dsn():
            for rec in self.sink.messages("127.0.0.3"):
                if "Final-Recipient: rfc822; stuck@stuck.test" in \
                        delivery_status(parse_dsn(rec)):
                    return rec
        rec = wait_for(dsn, 10, "the DSN for the administrator's bounce")
        self.assertEqual((rec["mail_from"], rec["rcpt_to"]), ("", [SENDER]))
        self.assertIn(f"cancelled by the administrator: {reason}",
                      delivery_status(parse_dsn(rec)))
        api(self.mtad, "GET", f"messages/{qid}", expect=404)
        [admin] = wait_for(lambda: self.events(type="admin", action="bounce"), 5,
                           "the admin line for the bounce")
        self.assertEqual((admin["target"], admin["detail"], admin["client"]),
                         (f"id:{qid}", reason, "127.0.0.1"))
        [bounce] = self.events(type="bounce", id=qid)
        self.assertEqual(bounce["recipient"], "stuck@stuck.test")
        self.assertEqual(self.delivered("stuck@stuck.test"), [])


class TokenTest(unittest.TestCase):

    def test_admin_api_needs_the_bearer_token_and_metrics_stay_open(self):
        tmp = tempfile.mkdtemp(prefix="telemetry-token-")
        token_file = os.path.join(tmp, "admin.token")
        with open(token_file, "w") as f:
            f.write("s3cret-admin-token\nignored second line\n")
        m = harness.Mtad(http={"admin_token_file": token_file}).start()
        try:
            port = m.http_port
            self.assertEqual(http_request(port, "GET", "/api/v1/queue")[0], 401)
            self.assertEqual(http_request(port, "GET", "/api/v1/queue", token="wrong")[0], 401)
            self.assertEqual(http_request(port, "GET", "/api/v1/queue",
                                          token="s3cret-admin-token ignored")[0], 401)
            self.assertEqual(http_request(port, "POST", "/api/v1/suspend",
                                          destination="x.test")[0], 401)
            status, body = http_request(port, "GET", "/api/v1/queue", token="s3cret-admin-token")
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["scheduled"], 0)
            status, body = http_request(port, "GET", "/api/v1/suspended",
                                        token="s3cret-admin-token")
            self.assertEqual((status, json.loads(body)["destinations"]), (200, []))
            status, text = http_request(port, "GET", "/metrics")
            self.assertEqual(status, 200)
            self.assertIn("mta_admin_actions_total", text)
            self.assertEqual(total(parse_exposition(text), "mta_admin_actions_total"), 0)
            self.assertEqual(http_request(port, "GET", "/healthz")[0], 200)
        finally:
            m.stop()

    def test_non_loopback_http_address_without_token_is_refused(self):
        # 192.0.2.1 (TEST-NET-1) is never bound: the configuration check must refuse first.
        m = harness.Mtad(http={"address": f"192.0.2.1:{harness.free_port()}"})
        with self.assertRaises(RuntimeError) as cm:
            m.start(timeout=10)
        m.stop()
        message = str(cm.exception)
        self.assertIn("admin_token_file", message)
        self.assertIn("loopback", message)
        self.assertNotIn("mtad ready", m.log())


if __name__ == "__main__":
    harness.main()
