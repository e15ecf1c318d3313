"""End-to-end traffic shaping: a real mtad sending from egress sources bound to 127.0.0.2,
127.0.0.3 to real SMTP servers (capture_sink.py) on 127.0.0.10 and up, reached through
delivery.routes.

Every assertion is made from what the sinks recorded (peer address = the source mtad
bound to, timestamps, connection ids, EHLO names, content), never from mtad's own
counters; mtad's log is only read for the lines the shaping issue promises.
"""

import base64
import random
import smtplib
import sys
import threading
import time
import unittest

import harness
from dns_server import NsdServer


IP2, IP3 = "127.0.0.2", "127.0.0.3"
SOURCES = [
    {"name": "ip2", "address": IP2, "ehlo": "ip2.shaping.test"},
    {"name": "ip3", "address": IP3, "ehlo": "ip3.shaping.test"},
]
# Long retry waits: an accidental deferral shows up as mail that never arrives in time.
DELIVERY = {"retry_intervals": "1m", "retry_jitter_percent": 0}
# Both streams from ip2, so they share its connections; the listener's default is marketing.
SHARED_STREAMS = [{"name": "transactional", "pool": "only2", "priority": 10},
                  {"name": "marketing", "pool": "only2", "priority": 0}]
MARKETING_LISTENER = {"stream": "marketing", "stream_header": "X-Stream"}


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Sink(harness.CaptureSink):
    """One capture_sink.py listening on `addresses` (one port for all of them: a free one
    for a single address), with its records and stats."""

    def __init__(self, addresses, script=None, port=0):
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        super().__init__(addresses, script, port=port, prefix="shaping-sink-")

    def route(self, domain):
        return {"domain": domain, "host": self.address, "port": self.port, "tls": "none"}

    def message_count(self):
        """Messages recorded so far (cheaper than parsing them)."""
        try:
            with open(self.out) as f:
                return f.read().count('"type": "message"')
        except FileNotFoundError:
            return 0

    def connections(self):
        return self.records("connection")

    def wait_quiet(self, timeout):
        """Waits until every connection has ended and been recorded; returns them."""
        def done():
            st = self.stats()
            conns = self.connections()
            return conns if st["concurrent"] == 0 and len(conns) == st["connections_total"] \
                else None
        return wait_for(done, timeout, f"the connections to {self.address} to end")


def message(rcpt, seq, stream=None):
    headers = [f"From: s@sender.test", f"To: {rcpt}", f"Subject: shaping {seq}",
               f"Message-ID: <shaping-{seq}-{rcpt}>", "Date: Fri, 04 Dec 2026 10:00:00 +0000"]
    if stream is not None:
        headers.append(f"X-Stream: {stream}")
    return ("\r\n".join(headers) + f"\r\n\r\nBody of message {seq}.\r\n").encode()


def inject(port, items, threads=4, source_address=None, timeout=120):
    """Sends each (rcpt, content) over `threads` parallel smtplib sessions (several
    messages per session); fails the test if any is not accepted."""
    errors = []

    def worker(chunk):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30,
                              source_address=(source_address, 0) if source_address else None) as c:
                for rcpt, content in chunk:
                    c.sendmail("s@sender.test", [rcpt], content)
        except Exception as e:  # reported below, in the test's thread
            errors.append(repr(e))

    workers = [threading.Thread(target=worker, args=(items[i::threads],), daemon=True)
               for i in range(threads)]
    for w in workers:
        w.start()
    deadline = time.time() + timeout
    for w in workers:
        w.join(max(0.0, deadline - time.time()))
    if any(w.is_alive() for w in workers):
        raise AssertionError(f"injection did not finish within {timeout} s")
    if errors:
        raise AssertionError(f"injection failed: {errors[:3]}")


def max_concurrent(conns):
    """Most connections open at once (an end at the same instant as a start comes first)."""
    events = sorted([(c["start"], 1) for c in conns] + [(c["end"], -1) for c in conns])
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


class ShapingCase(unittest.TestCase):
    """Each test starts its own sinks and mtad; both are stopped after the test."""

    def setUp(self):
        self.sinks = []
        self.mtads = []

    def tearDown(self):
        for m in self.mtads:
            m.stop()
        for s in self.sinks:
            s.stop()

    def sink(self, address, script=None):
        s = Sink(address, script)
        self.sinks.append(s)
        return s

    def sink_on_one_port(self, addresses, script=None):
        """A sink on several addresses with the same port (MX hosts share smtp_port)."""
        for _ in range(20):
            try:
                s = Sink(addresses, script, port=random.randint(20000, 60000))
            except OSError:
                continue
            self.sinks.append(s)
            return s
        raise RuntimeError("no common free port for the sink")

    def mtad(self, routes, listener=None, delivery=None, **sections):
        """Starts mtad with `routes` and top-level `sections` (egress, streams, shaping,
        suspended); egress defaults to the sources ip2 and ip3 in the pools named below."""
        sections.setdefault("egress", {"sources": SOURCES, "pools": [
            {"name": "only2", "sources": [{"source": "ip2"}]},
            {"name": "only3", "sources": [{"source": "ip3"}]},
            {"name": "both", "sources": [{"source": "ip2"}, {"source": "ip3"}]},
        ]})
        m = harness.Mtad(server={"hostname": "mta.shaping.test"}, listener=listener,
                         delivery=dict(DELIVERY, routes=routes, **(delivery or {})),
                         sections=sections)
        self.mtads.append(m)
        return m.start()

    def connections_after_stop(self, m, sink):
        """Stops mtad (its idle connections QUIT) and returns every connection the sink saw."""
        m.stop()
        return sink.wait_quiet(timeout=15)

    def rcpts_of(self, msgs):
        return sorted(r for m in msgs for r in m["rcpt_to"])

    def assertAllDeliveredOnce(self, sink, rcpts, timeout):
        want = sorted(rcpts)
        wait_for(lambda: len(sink.messages()) >= len(want), timeout,
                 f"{len(want)} messages at {sink.address} (have {len(sink.messages())})")
        self.assertEqual(self.rcpts_of(sink.messages()), want)


class RateTest(ShapingCase):

    def test_message_rate_and_burst_hold_at_the_sink(self):
        # What the sink sees is what is measured: it stamps a message when its data has
        # arrived, so a busy machine holding the (Python) sink up shifts stamps together.
        # 10/s leaves 0.1 s between tokens, and the burst is half a second's worth (not the
        # default, a second's worth): a stamp would have to be held up by a good part of
        # that before an honest bucket looked like an excess. Two connections share it;
        # each may have one transaction waiting at the sink.
        rate, burst, n = 10, 5, 180
        sink = self.sink("127.0.0.10")
        m = self.mtad([sink.route("rate.test")],
                      streams=[{"name": "default", "pool": "only2"}],
                      shaping={"rules": [{"name": "rated", "domain": "rate.test",
                                          "max_connections": 2,
                                          "max_message_rate": f"{rate}/s",
                                          "rate_burst": burst}]})
        rcpts = [f"r{i}@rate.test" for i in range(n)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(rcpts)], threads=8)
        injected = time.time()
        self.assertAllDeliveredOnce(sink, rcpts, timeout=n / rate + 15)
        msgs = sink.messages()
        self.assertEqual({x["peer_ip"] for x in msgs}, {IP2})
        times = sorted(x["timestamp"] for x in msgs)
        # A 10 s window in steady state: after the first second's burst, and only once the
        # whole backlog is queued, so that the rate alone limits what arrives.
        start = max(times[0] + 1, injected)
        self.assertGreater(times[-1], start + 10, "the backlog ran out before the window ended")
        in_window = sum(1 for t in times if start <= t < start + 10)
        self.assertLessEqual(abs(in_window - 10 * rate), rate, (in_window, start - times[0]))
        # No one-second window (starting at any delivery) holds more than rate + burst.
        j = 0
        busiest = 0
        for i, t in enumerate(times):
            while j < len(times) and times[j] < t + 1:
                j += 1
            busiest = max(busiest, j - i)
        k = rate + burst + 1
        tightest = min(times[i + k - 1] - times[i] for i in range(len(times) - k + 1))
        print(f"rate: {in_window} in 10 s, busiest second {busiest}, "
              f"{k} messages took at least {tightest:.3f} s", file=sys.stderr)
        self.assertLessEqual(busiest, rate + burst)
        self.assertGreaterEqual(len({x["conn_id"] for x in msgs}), 2)  # one shared bucket


class ConnectionLimitTest(ShapingCase):

    def test_connection_cap_per_source_is_never_exceeded_and_is_reached(self):
        # 0.05 s before every reply: a transaction takes ~0.15 s, so a backlog builds up.
        sink = self.sink("127.0.0.11", {"delay": 0.05})
        m = self.mtad([sink.route("cap.test")],
                      streams=[{"name": "default", "pool": "both"}],
                      shaping={"rules": [{"name": "capped", "domain": "cap.test",
                                          "max_connections": 3,
                                          "max_messages_per_connection": 4,
                                          "idle_timeout_s": 1}]})
        rcpts = [f"c{i}@cap.test" for i in range(90)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(rcpts)], threads=6)
        self.assertAllDeliveredOnce(sink, rcpts, timeout=40)
        conns = self.connections_after_stop(m, sink)
        by_source = {}
        for c in conns:
            by_source.setdefault(c["peer_ip"], []).append(c)
        self.assertEqual(set(by_source), {IP2, IP3})
        peaks = {ip: max_concurrent(cs) for ip, cs in by_source.items()}
        self.assertEqual(peaks, {IP2: 3, IP3: 3}, "peak concurrent connections per source")
        self.assertTrue(all(c["rejected"] is None for c in conns))
        print(f"cap: {len(conns)} connections, peaks {peaks}", file=sys.stderr)

    def test_messages_per_connection_are_capped_and_nothing_is_lost(self):
        sink = self.sink("127.0.0.12", {"delay": 0.01})
        m = self.mtad([sink.route("mpc.test")],
                      streams=[{"name": "default", "pool": "only2"}],
                      shaping={"rules": [{"name": "per_conn", "domain": "mpc.test",
                                          "max_connections": 2,
                                          "max_messages_per_connection": 5,
                                          "idle_timeout_s": 1}]})
        rcpts = [f"p{i}@mpc.test" for i in range(60)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(rcpts)], threads=4)
        self.assertAllDeliveredOnce(sink, rcpts, timeout=40)
        per_conn = {}
        for x in sink.messages():
            per_conn[x["conn_id"]] = per_conn.get(x["conn_id"], 0) + 1
        self.assertLessEqual(max(per_conn.values()), 5, per_conn)
        self.assertEqual(max(per_conn.values()), 5, "no connection was ever full")
        conns = self.connections_after_stop(m, sink)
        self.assertLessEqual(max(c["messages"] for c in conns), 5)
        self.assertGreaterEqual(len(conns), 12)


class IdleTimeoutTest(ShapingCase):

    def test_idle_connection_is_closed_after_the_rules_idle_timeout(self):
        sink = self.sink("127.0.0.20")
        m = self.mtad([sink.route("idle.test")],
                      streams=[{"name": "default", "pool": "only2"}],
                      shaping={"rules": [{"name": "brief", "domain": "idle.test",
                                          "idle_timeout_s": 1}]})
        inject(m.port, [("i@idle.test", message("i@idle.test", 0))], threads=1)
        self.assertAllDeliveredOnce(sink, ["i@idle.test"], timeout=10)
        [x] = sink.messages()
        # Idle for 1 s, then QUIT: the connection ends about 1 s after its last message.
        wait_for(lambda: sink.connections(), 6,
                 "the idle connection to end (idle_timeout_s: 1, waited 6 s)")
        [c] = sink.connections()
        self.assertEqual(c["messages"], 1)
        self.assertGreaterEqual(c["end"] - x["timestamp"], 0.9)
        self.assertLess(c["end"] - x["timestamp"], 3)


class WeightTest(ShapingCase):

    def test_pool_weights_split_the_messages_and_each_source_has_its_ehlo_name(self):
        n, batch = 2000, 50
        sink = self.sink("127.0.0.13")
        egress = {"sources": SOURCES, "pools": [
            {"name": "weighted", "sources": [{"source": "ip2", "weight": 3},
                                             {"source": "ip3", "weight": 1}]}]}
        # Weights choose among the sources that are under their connection cap: once both
        # are full, a freed slot goes back to the source that freed it (documented), so
        # shares drift towards 1:1. The mail goes in batches of 50 (each delivered before
        # the next) so that no more than 50 connections are ever wanted: the caps never bind
        # and the split is the weights' alone.
        m = self.mtad([sink.route("weights.test")], egress=egress,
                      streams=[{"name": "default", "pool": "weighted"}],
                      shaping={"rules": [{"name": "w", "domain": "weights.test",
                                          "max_connections": batch + 10,
                                          "max_messages_per_connection": 10}]})
        rcpts = [f"w{i}@weights.test" for i in range(n)]
        for b in range(0, n, batch):
            inject(m.port, [(r, message(r, b + i)) for i, r in enumerate(rcpts[b:b + batch])],
                   threads=4)
            wait_for(lambda: sink.message_count() >= b + batch, 30,
                     f"delivery of messages {b} to {b + batch - 1}")
        self.assertAllDeliveredOnce(sink, rcpts, timeout=10)
        msgs = sink.messages()
        count = {IP2: 0, IP3: 0}
        for x in msgs:
            count[x["peer_ip"]] += 1
        conns = self.connections_after_stop(m, sink)
        peaks = {ip: max_concurrent([c for c in conns if c["peer_ip"] == ip])
                 for ip in (IP2, IP3)}
        print(f"weights: {count}, {len(conns)} connections, peaks {peaks}", file=sys.stderr)
        self.assertLess(max(peaks.values()), batch + 10, "a connection cap was reached")
        # Within 10% of each share: 75% +- 7.5 points and 25% +- 2.5 points.
        self.assertLessEqual(abs(count[IP2] / n - 0.75), 0.075, count)
        self.assertLessEqual(abs(count[IP3] / n - 0.25), 0.025, count)
        helos = {(x["peer_ip"], x["helo"]) for x in msgs}
        self.assertEqual(helos, {(IP2, "ip2.shaping.test"), (IP3, "ip3.shaping.test")})


BACKOFF = [{"code": 421, "text": "(?i)too many connections", "action": "suspend",
            "duration": "2s"}]


class BackoffTest(ShapingCase):

    def test_421_at_greeting_suspends_the_source_then_mail_flows_without_a_retry_wait(self):
        sink = self.sink("127.0.0.14", {"rules": [
            {"command": "CONNECT", "reply": "421 4.7.0 Too many connections, try later",
             "times": 2, "scope": "global"}]})
        m = self.mtad([sink.route("backoff.test")],
                      streams=[{"name": "default", "pool": "only2"}],
                      shaping={"rules": [{"name": "touchy", "domain": "backoff.test",
                                          "max_connections": 1, "backoff": BACKOFF,
                                          "backoff_restore_interval": "1h"}]})
        rcpts = [f"b{i}@backoff.test" for i in range(3)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(rcpts)], threads=1)
        # Two refusals, 2 s apart at least, then delivery: well inside the 1 min retry wait.
        self.assertAllDeliveredOnce(sink, rcpts, timeout=15)
        conns = sorted(self.connections_after_stop(m, sink), key=lambda c: c["start"])
        refused = [c for c in conns if c["rejected"] is not None]
        self.assertEqual(len(refused), 2, conns)
        self.assertTrue(all(c["peer_ip"] == IP2 for c in conns))
        self.assertIs(conns[0], refused[0])
        # Connections after a refusal: none within the 2 s pause (0.1 s timer slack).
        for r in refused:
            later = [c for c in conns if c["start"] > r["start"]]
            self.assertTrue(later)
            gap = later[0]["start"] - r["end"]
            self.assertGreaterEqual(gap, 1.9, f"a connection {gap:.3f} s after a 421")
            self.assertLess(gap, 4, f"the pause lasted {gap:.3f} s")
        last_refusal_end = refused[-1]["end"]
        delivered = min(x["timestamp"] for x in sink.messages())
        self.assertLess(delivered - last_refusal_end, 4)
        self.assertRegex(m.log(), r"shaping: .* via ip2: suspended for 2s")

    def test_suspend_reply_in_a_transaction_requeues_the_job(self):
        sink = self.sink("127.0.0.15", {"rules": [
            {"command": "MAIL", "reply": "451 4.7.0 Too many connections from your IP",
             "times": 1, "scope": "global"}]})
        backoff = [{"code": 451, "text": "(?i)too many connections", "action": "suspend",
                    "duration": "2s"}]
        m = self.mtad([sink.route("midway.test")],
                      streams=[{"name": "default", "pool": "only2"}],
                      shaping={"rules": [{"name": "midway", "domain": "midway.test",
                                          "max_connections": 1, "backoff": backoff}]})
        t0 = time.time()
        inject(m.port, [("x@midway.test", message("x@midway.test", 0))], threads=1)
        self.assertAllDeliveredOnce(sink, ["x@midway.test"], timeout=15)
        [x] = sink.messages()
        conns = sorted(self.connections_after_stop(m, sink), key=lambda c: c["start"])
        # The refused attempt's connection carried nothing; the message came after the pause.
        self.assertEqual(conns[0]["messages"], 0)
        self.assertGreaterEqual(x["timestamp"] - conns[0]["start"], 1.9)
        self.assertLess(x["timestamp"] - t0, 8)
        self.assertRegex(m.log(), r"shaping: .* via ip2: suspended for 2s")


class BackoffRestoreTest(ShapingCase):

    def test_after_a_suspension_the_source_resumes_at_half_its_cap_then_doubles_back(self):
        cap, pause, restore = 4, 2.0, 4.0
        # 0.1 s before every reply: ~0.3 s per transaction, so the backlog lasts.
        sink = self.sink("127.0.0.21", {"delay": 0.1, "rules": [
            {"command": "CONNECT", "reply": "421 4.7.0 Too many connections, try later",
             "times": 1, "scope": "global"}]})
        m = self.mtad([sink.route("restore.test")],
                      streams=[{"name": "default", "pool": "only2"}],
                      shaping={"rules": [{"name": "restore", "domain": "restore.test",
                                          "max_connections": cap, "backoff": BACKOFF,
                                          "backoff_restore_interval": "4s"}]})
        rcpts = [f"q{i}@restore.test" for i in range(60)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(rcpts)], threads=4)
        self.assertAllDeliveredOnce(sink, rcpts, timeout=40)
        conns = self.connections_after_stop(m, sink)
        [refused] = [c for c in conns if c["rejected"] is not None]
        msgs = sink.messages()
        t421 = refused["end"]

        def used_at_once(start, end):
            """Most connections carrying mail at the same time within [start, end]."""
            spans = {}
            for x in msgs:
                if start <= x["timestamp"] <= end:
                    lo, hi = spans.get(x["conn_id"], (x["timestamp"], x["timestamp"]))
                    spans[x["conn_id"]] = (min(lo, x["timestamp"]), max(hi, x["timestamp"]))
            return max_concurrent([{"start": a, "end": b} for a, b in spans.values()])

        # A transaction takes 0.3 s: one under way when the 421 came may still end.
        self.assertFalse([x for x in msgs if t421 + 0.5 < x["timestamp"] < t421 + pause - 0.1],
                         "mail went out during the pause")
        # Between the end of the pause and the first quiet interval: half the cap.
        half = used_at_once(t421 + pause + 0.3, t421 + restore - 0.3)
        # After the quiet interval: the full cap again (the backlog is still there).
        full = used_at_once(t421 + restore + 0.5, max(x["timestamp"] for x in msgs))
        problems = []
        if half > cap // 2:
            problems.append(f"{half} connections carried mail at once between the end of the "
                            f"pause and the first quiet interval (half the cap: {cap // 2})")
        if full != cap:
            problems.append(f"{full} connections carried mail at once after the quiet interval, "
                            f"with a backlog waiting (the cap: {cap})")
        self.assertEqual(problems, [])
        self.assertRegex(m.log(), r"shaping: .* via ip2: backoff eased, now at 100%")


class SuspendTest(ShapingCase):

    def test_suspended_destination_waits_until_sighup_resumes_it(self):
        sink = self.sink("127.0.0.16")
        m = self.mtad([sink.route("held.test"), sink.route("free.test")],
                      streams=[{"name": "default", "pool": "only2"}],
                      suspended={"destinations": ["held.test"]})
        held = [f"h{i}@held.test" for i in range(10)]
        free = [f"f{i}@free.test" for i in range(3)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(held + free)], threads=2)
        # Other destinations keep flowing; the held one sends nothing.
        wait_for(lambda: len(sink.messages()) >= len(free), 10, "mail for free.test")
        time.sleep(2)
        self.assertEqual(self.rcpts_of(sink.messages()), sorted(free))
        m.sections["suspended"] = {"destinations": []}
        resumed = time.time()
        m.reload()
        self.assertAllDeliveredOnce(sink, held + free, timeout=10)
        self.assertLess(max(x["timestamp"] for x in sink.messages()) - resumed, 5)

    def test_suspended_source_sends_nothing_and_sighup_switches_sources(self):
        sink = self.sink("127.0.0.17")
        m = self.mtad([sink.route("src.test")],
                      streams=[{"name": "default", "pool": "both"}],
                      shaping={"default": {"idle_timeout_s": 1}},
                      suspended={"sources": ["ip2"]})
        first = [f"a{i}@src.test" for i in range(20)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(first)], threads=4)
        self.assertAllDeliveredOnce(sink, first, timeout=15)
        self.assertEqual({x["peer_ip"] for x in sink.messages()}, {IP3})
        m.sections["suspended"] = {"sources": ["ip3"]}
        m.reload()
        second = [f"b{i}@src.test" for i in range(20)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(second)], threads=4)
        self.assertAllDeliveredOnce(sink, first + second, timeout=15)
        later = [x for x in sink.messages() if x["rcpt_to"][0] in second]
        self.assertEqual({x["peer_ip"] for x in later}, {IP2})

    def test_suspended_stream_is_held_until_sighup_resumes_it(self):
        sink = self.sink("127.0.0.24")
        listener = {"stream": "transactional", "stream_header": "X-Stream"}
        m = self.mtad([sink.route("mixed.test")], listener=listener, streams=SHARED_STREAMS,
                      suspended={"streams": ["marketing"]})
        tx = [f"tx{i}@mixed.test" for i in range(5)]
        mk = [f"mk{i}@mixed.test" for i in range(5)]
        inject(m.port, [(r, message(r, i, "transactional")) for i, r in enumerate(tx)] +
               [(r, message(r, i, "marketing")) for i, r in enumerate(mk)], threads=2)
        wait_for(lambda: len(sink.messages()) >= len(tx), 10, "the transactional mail")
        time.sleep(2)
        self.assertEqual(self.rcpts_of(sink.messages()), sorted(tx))
        m.sections["suspended"] = {"streams": []}
        resumed = time.time()
        m.reload()
        self.assertAllDeliveredOnce(sink, tx + mk, timeout=10)
        self.assertLess(max(x["timestamp"] for x in sink.messages()) - resumed, 5)


ZONE = """
alpha        IN MX 10 mx1.bigmail
beta         IN MX 10 mx2.bigmail
mx1.bigmail  IN A 127.0.0.22
mx2.bigmail  IN A 127.0.0.23
"""


class MxSuffixTest(ShapingCase):

    def test_mx_suffix_rule_is_one_budget_for_every_domain_it_matches(self):
        # alpha.test and beta.test have different MX hosts (two sites), both *.bigmail.test:
        # the rule's one connection per source is shared by both, wherever they resolve.
        nsd = NsdServer({"test": ZONE}).start()
        self.addCleanup(nsd.stop)
        sink = self.sink_on_one_port(["127.0.0.22", "127.0.0.23"], {"delay": 0.02})
        m = self.mtad([], delivery={"dns_servers": [nsd.address()], "smtp_port": sink.port,
                                    "tls": "none"},
                      streams=[{"name": "default", "pool": "only2"}],
                      shaping={"rules": [{"name": "bigmail", "mx_suffix": ".bigmail.test",
                                          "max_connections": 1,
                                          "max_messages_per_connection": 3}]},
                      suspended={"destinations": ["bigmail"]})  # by rule name
        rcpts = [f"{d}{i}@{d}.test" for i in range(12) for d in ("alpha", "beta")]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(rcpts)], threads=4)
        time.sleep(1.5)
        self.assertEqual(sink.messages(), [], "mail for a suspended rule went out")
        m.sections["suspended"] = {"destinations": []}
        m.reload()
        self.assertAllDeliveredOnce(sink, rcpts, timeout=20)
        for x in sink.messages():
            host = "127.0.0.22" if x["rcpt_to"][0].startswith("alpha") else "127.0.0.23"
            self.assertEqual((x["local_ip"], x["peer_ip"]), (host, IP2))
        conns = self.connections_after_stop(m, sink)
        self.assertEqual({c["local_ip"] for c in conns}, {"127.0.0.22", "127.0.0.23"})
        self.assertEqual(max_concurrent(conns), 1, "connections to both MX hosts at once")


STREAMS = [{"name": "transactional", "pool": "only2", "priority": 10},
           {"name": "marketing", "pool": "only3", "priority": 0}]


class StreamIntakeTest(ShapingCase):

    def test_header_and_networks_choose_the_stream_and_unknown_streams_are_refused(self):
        # Mail expected from ip2 (transactional) and from ip3 (marketing) goes to two sites,
        # so that neither stream's connections wait at the other's destination (see
        # StreamPoolTest for what happens when they share one).
        sinks = {IP2: self.sink("127.0.0.18"), IP3: self.sink("127.0.0.26")}
        listener = {"stream": "marketing", "stream_header": "X-Stream",
                    "stream_networks": [{"network": "127.0.0.50/32",
                                         "stream": "transactional"}]}
        m = self.mtad([sinks[IP2].route("two.test"), sinks[IP3].route("three.test")],
                      listener=listener, streams=STREAMS)
        cases = [  # (rcpt, X-Stream value, client address); the domain names the source
            ("tx@two.test", "transactional", None),
            ("mk@three.test", "marketing", None),
            ("none@three.test", None, None),  # the listener's stream
            ("net@two.test", "marketing", "127.0.0.50"),  # stream_networks win
            ("netnone@two.test", None, "127.0.0.50"),
        ]
        for i, (rcpt, stream, client) in enumerate(cases):
            inject(m.port, [(rcpt, message(rcpt, i, stream))], threads=1, source_address=client)
        with smtplib.SMTP("127.0.0.1", m.port, timeout=10) as c:
            with self.assertRaises(smtplib.SMTPDataError) as refused:
                c.sendmail("s@sender.test", ["bogus@two.test"],
                           message("bogus@two.test", 99, "no-such-stream"))
        self.assertEqual(refused.exception.smtp_code, 550)
        self.assertRegex(refused.exception.smtp_error.decode(), r"^5\.7\.1 Unknown stream")
        for ip, sink in sinks.items():
            domain = "two.test" if ip == IP2 else "three.test"
            self.assertAllDeliveredOnce(sink, [c[0] for c in cases if c[0].endswith(domain)],
                                        timeout=10)
            for x in sink.messages():
                rcpt = x["rcpt_to"][0]
                self.assertEqual(x["peer_ip"], ip, rcpt)
                content = base64.b64decode(x["data_b64"])
                self.assertNotIn(b"x-stream", content.lower(), rcpt)
                self.assertIn(b"Subject: shaping", content)


class StreamPoolTest(ShapingCase):

    def test_idle_connections_of_one_pool_do_not_hold_back_another_pools_mail(self):
        # transactional (ip2) and marketing (ip3) mail for one destination. An idle ip2
        # connection cannot carry marketing mail, so marketing needs an ip3 connection.
        # idle_timeout_s is long so that only a new connection can deliver it in time.
        sink = self.sink("127.0.0.25")
        m = self.mtad([sink.route("pools.test")], listener=MARKETING_LISTENER, streams=STREAMS,
                      shaping={"default": {"idle_timeout_s": 60}})
        inject(m.port, [("tx@pools.test", message("tx@pools.test", 0, "transactional"))],
               threads=1)
        wait_for(lambda: sink.messages(), 10, "the transactional message")
        time.sleep(0.5)  # its connection is idle now
        sent = time.time()
        inject(m.port, [("mk@pools.test", message("mk@pools.test", 1, "marketing"))],
               threads=1)
        self.assertAllDeliveredOnce(sink, ["tx@pools.test", "mk@pools.test"], timeout=5)
        [mk] = [x for x in sink.messages() if x["rcpt_to"] == ["mk@pools.test"]]
        self.assertEqual(mk["peer_ip"], IP3)
        self.assertLess(mk["timestamp"] - sent, 2)


    def test_idle_connections_of_a_suspended_source_do_not_hold_back_the_pool(self):
        # One stream over ip2 and ip3. ip2 carries the first message and then idles; once
        # ip2 is suspended, the next message must go through ip3.
        sink = self.sink("127.0.0.27")
        m = self.mtad([sink.route("switch.test")],
                      streams=[{"name": "default", "pool": "both"}],
                      shaping={"default": {"idle_timeout_s": 60}})
        inject(m.port, [("first@switch.test", message("first@switch.test", 0))], threads=1)
        [first] = wait_for(lambda: sink.messages(), 10, "the first message")
        idle = first["peer_ip"]
        name = {IP2: "ip2", IP3: "ip3"}[idle]
        time.sleep(0.5)  # its connection is idle now
        m.sections["suspended"] = {"sources": [name]}
        m.reload()
        sent = time.time()
        inject(m.port, [("second@switch.test", message("second@switch.test", 1))], threads=1)
        self.assertAllDeliveredOnce(sink, ["first@switch.test", "second@switch.test"],
                                    timeout=5)
        [second] = [x for x in sink.messages() if x["rcpt_to"] == ["second@switch.test"]]
        self.assertEqual(second["peer_ip"], IP3 if idle == IP2 else IP2)
        self.assertLess(second["timestamp"] - sent, 2)


class PriorityTest(ShapingCase):

    def test_transactional_mail_overtakes_a_marketing_backlog(self):
        # One connection; 0.05 s before every reply: ~0.15 s per transaction.
        sink = self.sink("127.0.0.19", {"delay": 0.05})
        m = self.mtad([sink.route("prio.test")], listener=MARKETING_LISTENER,
                      streams=SHARED_STREAMS,
                      shaping={"rules": [{"name": "one", "domain": "prio.test",
                                          "max_connections": 1}]})
        bulk = [f"m{i}@prio.test" for i in range(200)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(bulk)], threads=4)
        wait_for(lambda: sink.message_count() >= 3, 10, "the marketing backlog to start moving")
        sent_at = {}
        for i in range(5):
            rcpt = f"t{i}@prio.test"
            inject(m.port, [(rcpt, message(rcpt, i, "transactional"))], threads=1)
            sent_at[rcpt] = time.time()
            time.sleep(0.5)
        wait_for(lambda: all(any(r in x["rcpt_to"] for x in sink.messages()) for r in sent_at),
                 10, "the transactional messages")
        order = sorted(sink.messages(), key=lambda x: (x["timestamp"], x["conn_id"]))
        rcpt_order = [x["rcpt_to"][0] for x in order]
        for rcpt, t in sent_at.items():
            pos = rcpt_order.index(rcpt)
            # Marketing messages that arrived after this one was accepted: at most the
            # transaction in flight (and one more for timestamp granularity).
            overtaken = [x for x in order[:pos] if x["timestamp"] > t]
            self.assertLessEqual(len(overtaken), 2, (rcpt, [x["rcpt_to"] for x in overtaken]))
        delivered_bulk = sum(1 for r in rcpt_order if r.startswith("m"))
        self.assertLess(delivered_bulk, 150, "the backlog drained before the test measured")
        print(f"priority: {delivered_bulk} of 200 marketing delivered by then", file=sys.stderr)


class ReservedConnectionsTest(ShapingCase):

    def test_marketing_leaves_the_reserved_connection_to_transactional_mail(self):
        # Three connections, one reserved; 0.02 s before every reply: ~0.06 s a transaction.
        sink = self.sink("127.0.0.21", {"delay": 0.02})
        m = self.mtad([sink.route("reserve.test")], listener=MARKETING_LISTENER,
                      streams=SHARED_STREAMS,
                      shaping={"rules": [{"name": "r", "domain": "reserve.test",
                                          "max_connections": 3, "reserved_connections": 1}]})
        bulk = [f"m{i}@reserve.test" for i in range(150)]
        inject(m.port, [(r, message(r, i)) for i, r in enumerate(bulk)], threads=4)
        wait_for(lambda: sink.message_count() >= 5, 10, "the marketing backlog to start moving")
        accepted = {}
        for i in range(4):
            rcpt = f"t{i}@reserve.test"
            inject(m.port, [(rcpt, message(rcpt, i, "transactional"))], threads=1)
            accepted[rcpt] = time.time()
            time.sleep(0.3)
        self.assertAllDeliveredOnce(sink, bulk + list(accepted), timeout=60)
        msgs = sink.messages()
        # Marketing kept at most 3 - 1 connections busy: the spans from each connection's
        # first to last marketing message overlap at most twice (and do twice).
        spans = {}
        for x in msgs:
            if x["rcpt_to"][0].startswith("m"):
                first, last = spans.get(x["conn_id"], (x["timestamp"], x["timestamp"]))
                spans[x["conn_id"]] = (min(first, x["timestamp"]), max(last, x["timestamp"]))
        self.assertEqual(
            max_concurrent([{"start": a, "end": b} for a, b in spans.values()]), 2, spans)
        # Each transactional message went out on a connection that had no marketing
        # transaction in flight: none arrived on it between its acceptance and its arrival.
        for rcpt, t in accepted.items():
            [tx] = [x for x in msgs if x["rcpt_to"] == [rcpt]]
            waited_for = [x["rcpt_to"][0] for x in msgs if x["conn_id"] == tx["conn_id"]
                          and t < x["timestamp"] < tx["timestamp"]]
            self.assertEqual(waited_for, [], rcpt)
        delivered_bulk = sum(1 for x in msgs if x["rcpt_to"][0].startswith("m")
                             and x["timestamp"] < max(accepted.values()))
        self.assertLess(delivered_bulk, 140, "the backlog drained before the test measured")
        self.assertLessEqual(max_concurrent(self.connections_after_stop(m, sink)), 3)


if __name__ == "__main__":
    harness.main()
