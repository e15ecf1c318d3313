"""End-to-end delivery: mtad resolves MX through a real DNS server (nsd) and delivers to
real SMTP servers (capture_sink.py) on loopback addresses 127.0.0.x."""

import email
import email.policy
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import harness
from dns_server import NsdServer
from harness import strip_received

HERE = os.path.dirname(os.path.abspath(__file__))

ZONE = """
dest      IN MX 10 mx1.dest
dest      IN MX 20 mx2.dest
mx1.dest  IN A 127.0.0.2
mx2.dest  IN A 127.0.0.3
sender    IN MX 10 mx.sender
mx.sender IN A 127.0.0.4
nomx      IN A 127.0.0.5
nullmx    IN MX 0 .
twomx     IN MX 10 down.twomx
twomx     IN MX 20 up.twomx
down.twomx IN A 127.0.0.6
up.twomx  IN A 127.0.0.7
tls       IN MX 10 mx.tls
mx.tls    IN A 127.0.0.8
"""

RULES = {
    "rules": [
        {"command": "RCPT", "match": "greylist@", "reply": "450 4.2.0 Greylisted, try again",
         "times": 1},
        {"command": "RCPT", "match": "unknown@", "reply": "550 5.1.1 No such user here"},
        {"command": "RCPT", "match": "slow@", "reply": "451 4.3.0 Not now"},
        {"command": "RCPT", "match": "later@", "reply": "450 4.2.1 Come back later",
         "times": 3},
    ]
}


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Sink:
    """capture_sink.py listening on several loopback addresses with one port."""

    def __init__(self, addresses, port, script=None, tls=None):
        self.dir = tempfile.mkdtemp(prefix="sink-")
        self.out = os.path.join(self.dir, "messages.jsonl")
        args = [sys.executable, os.path.join(HERE, "capture_sink.py"), "--out", self.out,
                "--script", json.dumps(script or {})]
        for a in addresses:
            args += ["--listen", f"{a}:{port}"]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.dir, "err"), "w"), text=True)
        for _ in addresses:
            line = self.proc.stdout.readline()
            if not line:
                raise OSError("capture_sink failed: " + open(os.path.join(self.dir, "err")).read())

    def messages(self):
        try:
            with open(self.out) as f:
                recs = [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []
        return [r for r in recs if r.get("type") == "message"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_sinks(script, tls_files):
    """Plain sinks on .2-.5 and .7 (.6 stays closed: an MX that is down), TLS on .8."""
    for _ in range(20):
        port = random.randint(20000, 60000)
        try:
            plain = Sink(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.7"],
                         port, script)
        except OSError:
            continue
        try:
            tls = Sink(["127.0.0.8"], port, script, tls=tls_files)
        except OSError:
            plain.stop()
            continue
        return port, plain, tls
    raise RuntimeError("no common free port for the sinks")


def make_cert(directory):
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.tls.test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def message(subject, extra=b""):
    return (f"From: s@sender.test\r\nTo: r@dest.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@sender.test>\r\n"
            f"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\n").encode() + b"Body\r\n" + extra


def send(port, rcpts, content, sender="s@sender.test"):
    c = harness.RawSmtp(port)
    c.cmd("EHLO client.test")
    assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    for r in rcpts:
        code, text = c.cmd(f"RCPT TO:<{r}>")
        assert code == 250, (r, code, text)
    assert c.cmd("DATA")[0] == 354
    c.send(content.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    code, text = c.reply()
    assert code == 250, text
    c.cmd("QUIT")
    c.close()
    return text.split()[-1]


def delivery_config(nsd, port, **overrides):
    d = {"dns_servers": [nsd.address()], "smtp_port": port, "retry_intervals": "1s",
         "retry_jitter_percent": 0}
    d.update(overrides)
    return d


# Outbound connection limits for every destination: short timeouts keep the tests quick.
SHAPING = {"default": {"connect_timeout_s": 5, "idle_timeout_s": 1}}


def Mtad(**kwargs):
    """harness.Mtad with the SHAPING section."""
    return harness.Mtad(sections={"shaping": SHAPING}, **kwargs)


def dsn_for(sink, original_rcpt, timeout=30):
    """The DSN delivered to sender.test's MX about `original_rcpt`, parsed."""
    def find():
        for m in sink.messages():
            if m["local_ip"] != "127.0.0.4" or m["mail_from"] != "":
                continue
            import base64
            data = base64.b64decode(m["data_b64"])
            if f"Final-Recipient: rfc822; {original_rcpt}".encode() in data:
                return m, email.message_from_bytes(data, policy=email.policy.default)
        return None
    return wait_for(find, timeout, f"DSN about {original_rcpt}")


class DeliveryTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="delivery-")
        cls.nsd = NsdServer({"test": ZONE}).start()
        cls.port, cls.sink, cls.tls_sink = start_sinks(RULES, make_cert(cls.tmp))
        cls.mtad = Mtad(server={"hostname": "mta.test"},
                        delivery=delivery_config(cls.nsd, cls.port)).start()

    @classmethod
    def tearDownClass(cls):
        cls.mtad.stop()
        cls.sink.stop()
        cls.tls_sink.stop()
        cls.nsd.stop()

    def received(self, rcpt, sink=None):
        return [m for m in (sink or self.sink).messages() if rcpt in m["rcpt_to"]]

    def test_delivers_byte_identical_to_the_best_mx_in_one_transaction(self):
        import base64
        content = message("identical", b".leading dot line\r\n" + "caf\u00e9".encode() + b"\r\n")
        qid = send(self.mtad.port, ["one@dest.test", "two@dest.test"], content)
        [m] = wait_for(lambda: self.received("one@dest.test"), what="delivery")
        self.assertEqual(m["local_ip"], "127.0.0.2")  # preference 10 before 20
        self.assertEqual(m["rcpt_to"], ["one@dest.test", "two@dest.test"])
        self.assertEqual(m["mail_from"], "s@sender.test")
        data = base64.b64decode(m["data_b64"])
        self.assertIn(f"id {qid}".encode(), data.split(b"\r\n\r\n")[0])
        self.assertEqual(strip_received(data), content)

    def test_temporary_failure_is_retried_then_delivered(self):
        send(self.mtad.port, ["greylist@dest.test"], message("greylisted"))
        [m] = wait_for(lambda: self.received("greylist@dest.test"), what="retried delivery")
        self.assertEqual(m["rcpt_to"], ["greylist@dest.test"])

    def test_permanent_failure_sends_an_rfc3464_dsn_to_the_sender(self):
        send(self.mtad.port, ["unknown@dest.test", "fine@dest.test"], message("bounce me"))
        rec, dsn = dsn_for(self.sink, "unknown@dest.test")
        self.assertEqual(rec["rcpt_to"], ["s@sender.test"])
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        parts = list(dsn.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "message/rfc822"])
        status = parts[1].as_string()
        self.assertIn("Reporting-MTA: dns; mta.test", status)
        self.assertIn("Action: failed", status)
        self.assertIn("Status: 5.1.1", status)
        self.assertIn("Remote-MTA: dns; mx1.dest.test", status)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 No such user here", status)
        self.assertNotIn("fine@dest.test", status)  # delivered recipients are not reported
        self.assertIn(b"Subject: bounce me", parts[2].as_bytes())
        self.assertTrue(self.received("fine@dest.test"))

    def test_null_mx_and_nxdomain_bounce_at_once(self):
        send(self.mtad.port, ["x@nullmx.test", "y@nonexistent.test"], message("no such place"))
        _, null_dsn = dsn_for(self.sink, "x@nullmx.test")
        self.assertIn("Status: 5.1.10", null_dsn.as_string())
        _, nx_dsn = dsn_for(self.sink, "y@nonexistent.test")
        self.assertIn("Status: 5.1.2", nx_dsn.as_string())

    def test_first_mx_down_second_takes_the_mail(self):
        send(self.mtad.port, ["someone@twomx.test"], message("two mx"))
        [m] = wait_for(lambda: self.received("someone@twomx.test"), what="delivery to up MX")
        self.assertEqual(m["local_ip"], "127.0.0.7")

    def test_domain_without_mx_uses_its_address(self):
        send(self.mtad.port, ["someone@nomx.test"], message("implicit mx"))
        [m] = wait_for(lambda: self.received("someone@nomx.test"), what="implicit MX delivery")
        self.assertEqual(m["local_ip"], "127.0.0.5")

    def test_starttls_is_used_when_offered(self):
        send(self.mtad.port, ["secure@tls.test"], message("over tls"))
        [m] = wait_for(lambda: self.received("secure@tls.test", self.tls_sink),
                       what="TLS delivery")
        self.assertIsNotNone(m["tls"])
        self.assertIn(m["tls"]["version"], ("TLSv1.2", "TLSv1.3"))

    def test_bounce_to_null_sender_is_never_generated(self):
        send(self.mtad.port, ["unknown@dest.test"], message("from null"), sender="")
        time.sleep(2)
        for m in self.sink.messages():
            if m["local_ip"] == "127.0.0.4":
                import base64
                self.assertNotIn(b"from null", base64.b64decode(m["data_b64"]))


class ExpiryAndCrashTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="delivery2-")
        cls.nsd = NsdServer({"test": ZONE}).start()
        cls.port, cls.sink, cls.tls_sink = start_sinks(RULES, make_cert(cls.tmp))

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()
        cls.tls_sink.stop()
        cls.nsd.stop()

    def test_expired_message_bounces_with_4_4_7(self):
        m = Mtad(server={"hostname": "mta.test"},
                 delivery=delivery_config(self.nsd, self.port, queue_lifetime="3s")).start()
        try:
            send(m.port, ["slow@dest.test"], message("expiring"))
            _, dsn = dsn_for(self.sink, "slow@dest.test", timeout=30)
            status = dsn.as_string()
            self.assertIn("Action: failed", status)
            self.assertIn("Status: 4.4.7", status)
            self.assertIn("451 4.3.0 Not now", status)
        finally:
            m.stop()

    def test_notify_delay_gets_one_delay_dsn(self):
        m = Mtad(server={"hostname": "mta.test"},
                 delivery=delivery_config(self.nsd, self.port, delay_warning="2s")).start()
        try:
            c = harness.RawSmtp(m.port)
            c.cmd("EHLO client.test")
            c.cmd("MAIL FROM:<s@sender.test>")
            self.assertEqual(c.cmd("RCPT TO:<veryslow@dest.test> NOTIFY=DELAY,FAILURE")[0], 250)
            c.cmd("DATA")
            c.send(message("delayed") + b".\r\n")
            self.assertEqual(c.reply()[0], 250)
            c.close()
            _, dsn = dsn_for(self.sink, "veryslow@dest.test", timeout=30)
            status = dsn.as_string()
            self.assertIn("Action: delayed", status)
            self.assertIn("Subject: Delayed Mail", status)
            time.sleep(3)  # further deferrals must not repeat the notice
            import base64
            notices = [x for x in self.sink.messages() if x["local_ip"] == "127.0.0.4" and
                       b"Subject: delayed" in base64.b64decode(x["data_b64"])]
            self.assertEqual(len(notices), 1)
        finally:
            m.stop()

    def test_kill9_during_delivery_loses_nothing_and_repeats_nothing(self):
        m = Mtad(server={"hostname": "mta.test"},
                 delivery=delivery_config(self.nsd, self.port, retry_intervals="2s"))
        m.start()
        qid = send(m.port, ["first@dest.test", "later@nomx.test"], message("crash"))
        wait_for(lambda: [x for x in self.sink.messages() if "first@dest.test" in x["rcpt_to"]],
                 what="first delivery")
        time.sleep(0.5)  # the delivered outcome is fsynced right after the remote's 250
        m.kill9()
        records = m.dump()
        self.assertEqual([r["id"] for r in records], [qid])
        states = {r["address"]: r["state"] for r in records[0]["recipients"]}
        self.assertEqual(states, {"first@dest.test": 1, "later@nomx.test": 0})
        m.start()
        wait_for(lambda: [x for x in self.sink.messages() if "later@nomx.test" in x["rcpt_to"]],
                 timeout=40, what="delivery after restart")
        firsts = [x for x in self.sink.messages() if "first@dest.test" in x["rcpt_to"]]
        self.assertEqual(len(firsts), 1, "a recorded delivery was repeated after the crash")
        # The sink has the message before mtad has recorded the outcome and removed it:
        # wait for the home shard to let go of it, then stop.
        health = f"http://127.0.0.1:{m.http_port}/healthz"
        wait_for(lambda: json.load(urllib.request.urlopen(health, timeout=5))[
            "queued_messages"] == 0, timeout=10, what="empty queue")
        m.stop()
        self.assertIn("0 messages remain", m.log())
        self.assertEqual(m.dump(), [])


if __name__ == "__main__":
    harness.main()
