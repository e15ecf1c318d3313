"""Integration tests: a real mtad, real sockets, Python's smtplib and raw SMTP."""

import os
import json
import resource
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import harness
from harness import Mtad, RawSmtp, strip_received

MSG = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: test\r\n"
       b"Message-ID: <fixed-1@example.com>\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
       b"\r\nHello world.\r\n")


class IntakeTest(unittest.TestCase):

    def test_smtplib_message_is_spooled_byte_identical_with_dsn_params(self):
        m = Mtad(limits={"max_message_bytes": 20000}).start()
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=10)
        code, _ = s.ehlo("client.example.com")
        self.assertEqual(code, 250)
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                    "chunking", "dsn"):
            self.assertTrue(s.has_extn(ext), ext)
        self.assertEqual(s.esmtp_features["size"], "20000")
        s.mail("a@example.com", ["RET=HDRS", "ENVID=abc+2Bdef", "BODY=8BITMIME"])
        self.assertEqual(s.rcpt("b@example.net", ["NOTIFY=SUCCESS,FAILURE",
                                                  "ORCPT=rfc822;b+40x.example.net"])[0], 250)
        self.assertEqual(s.rcpt("c@example.net", ["NOTIFY=NEVER"])[0], 250)
        code, text = s.data(MSG)
        self.assertEqual(code, 250, text)
        self.assertRegex(text.decode(), r"^2\.0\.0 Ok: queued as [0-9a-f]{20}$")
        s.quit()
        self.assertEqual(m.stop(), 0)
        [rec] = m.dump()
        self.assertEqual(rec["id"], text.decode().split()[-1])
        self.assertEqual(strip_received(rec["content"]), MSG)
        self.assertEqual((rec["sender"], rec["ret"], rec["envid"], rec["body_type"]),
                         ("a@example.com", 2, "abc+def", 2))
        self.assertEqual([(r["address"], r["notify"], r["orcpt"]) for r in rec["recipients"]],
                         [("b@example.net", 6, "rfc822;b@x.example.net"),
                          ("c@example.net", 1, "")])


class RelayTest(unittest.TestCase):
    """A listener whose relay_networks excludes the client: only local domains pass."""

    @classmethod
    def setUpClass(cls):
        cls.mtad = Mtad(server={"local_domains": ["local.test"]},
                        listener={"relay_networks": []}).start()

    @classmethod
    def tearDownClass(cls):
        cls.mtad.stop()

    def test_only_local_domains_are_accepted(self):
        c = RawSmtp(self.mtad.port)
        c.cmd("EHLO probe.example")
        self.assertEqual(c.cmd("MAIL FROM:<spammer@example.org>")[0], 250)
        denied = ["<victim@other.test>", "<user%other.test@local.test>",
                  "<@local.test:victim@other.test>", "<\"victim@other.test\"@local.test>",
                  "<other.test!victim@local.test>", "<victim@[127.0.0.1]>",
                  "<victim@local.test.other.test>", "<victim@sub.local.test>"]
        for rcpt in denied:
            code, text = c.cmd(f"RCPT TO:{rcpt}")
            self.assertEqual(code, 554, rcpt)
            self.assertTrue(text.startswith("5.7.1"), text)
            if rcpt == denied[3]:
                # A fresh transaction keeps the error counter from closing the session.
                c.close()
                c = RawSmtp(self.mtad.port)
                c.cmd("EHLO probe.example")
                c.cmd("MAIL FROM:<spammer@example.org>")
        self.assertEqual(c.cmd("RCPT TO:<bounces@LOCAL.test>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<Postmaster>")[0], 250)
        c.close()

    def test_swaks_relay_denied(self):
        if not os.path.exists("/usr/bin/swaks"):
            self.skipTest("swaks not installed")
        out = subprocess.run(["swaks", "--server", f"127.0.0.1:{self.mtad.port}", "--to",
                              "victim@other.test", "--from", "x@example.org", "--timeout", "10"],
                             capture_output=True, text=True, timeout=30)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("554 5.7.1", out.stdout)


class FramingTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.mtad = Mtad(limits={"max_message_bytes": 20000, "max_recipients": 3,
                                "max_errors": 5}).start()

    @classmethod
    def tearDownClass(cls):
        cls.mtad.stop()

    def session(self):
        c = RawSmtp(self.mtad.port)
        self.assertEqual(c.greeting[0], 220)
        return c

    def test_pipelined_replies_come_in_order(self):
        c = self.session()
        c.send(b"EHLO pipe.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
               b"RCPT TO:<bad address>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        codes = [c.reply()[0] for _ in range(6)]
        self.assertEqual(codes, [250, 250, 250, 501, 250, 354])
        c.send(MSG + b".\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n")
        self.assertEqual([c.reply()[0] for _ in range(4)], [250, 250, 250, 354])
        c.send(MSG + b".\r\nQUIT\r\n")
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual(c.reply()[0], 221)
        self.assertTrue(c.closed_by_peer())

    def test_bdat_chunks(self):
        c = self.session()
        c.send(b"EHLO chunk.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
        self.assertEqual([c.reply()[0] for _ in range(3)], [250, 250, 250])
        half = len(MSG) // 2
        c.send(b"BDAT %d\r\n" % half + MSG[:half] + b"BDAT %d LAST\r\n" % (len(MSG) - half) +
               MSG[half:])
        code, text = c.reply()
        self.assertEqual(code, 250)
        self.assertIn("octets received", text)
        code, text = c.reply()
        self.assertEqual(code, 250)
        self.assertIn("queued as", text)
        # BDAT 0 LAST ends an otherwise complete chunked message.
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT %d\r\n" % len(MSG)
               + MSG + b"BDAT 0 LAST\r\n")
        self.assertEqual([c.reply()[0] for _ in range(4)], [250, 250, 250, 250])
        # BDAT without a transaction: the chunk is consumed, not run as commands.
        junk = b"RSET\r\nMAIL FROM:<x@y.z>\r\n"
        c.send(b"RSET\r\nBDAT %d LAST\r\n" % len(junk) + junk + b"NOOP\r\n")
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual(c.reply()[0], 503)
        self.assertEqual(c.reply()[0], 250)
        c.close()

    def test_size_limits(self):
        c = self.session()
        c.cmd("EHLO size.example")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com> SIZE=20001"), (552, "5.3.4 Message size exceeds fixed limit"))
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com> SIZE=100")[0], 250)
        c.cmd("RCPT TO:<b@example.net>")
        self.assertEqual(c.cmd("DATA")[0], 354)
        line = b"x" * 900 + b"\r\n"
        c.send(b"Subject: big\r\n\r\n" + line * 30 + b".\r\n")
        code, text = c.reply()
        self.assertEqual((code, text[:5]), (552, "5.3.4"))
        self.assertEqual(c.cmd("NOOP")[0], 250)  # session still usable
        c.close()

    def test_recipient_limit(self):
        c = self.session()
        c.cmd("EHLO rcpt.example")
        c.cmd("MAIL FROM:<a@example.com>")
        for i in range(3):
            self.assertEqual(c.cmd(f"RCPT TO:<r{i}@example.net>")[0], 250)
        code, text = c.cmd("RCPT TO:<r4@example.net>")
        self.assertEqual((code, text[:5]), (452, "4.5.3"))
        c.close()

    def test_smuggling_sequences_never_split_a_message(self):
        for seq in (b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r"):
            c = self.session()
            c.cmd("EHLO smuggle.example")
            c.cmd("MAIL FROM:<a@example.com>")
            c.cmd("RCPT TO:<b@example.net>")
            self.assertEqual(c.cmd("DATA")[0], 354)
            c.send(b"Subject: s\r\n\r\nhello" + seq + b"MAIL FROM:<evil@example.org>\r\n"
                   b"RCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n")
            code, text = c.reply()
            self.assertEqual(code, 550, (seq, text))
            self.assertIn("bare", text)
            # The very next reply belongs to NOOP: nothing inside the message ran as a command.
            self.assertEqual(c.reply(), (250, "2.0.0 Ok"), seq)
            c.close()

    def test_line_length_limits_and_nul(self):
        c = self.session()
        c.cmd("EHLO lines.example")
        code, text = c.cmd("NOOP " + "x" * 600)
        self.assertEqual((code, text[:5]), (500, "5.5.2"))
        self.assertEqual(c.cmd("NOOP")[0], 250)
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.net>")
        c.cmd("DATA")
        c.send(b"Subject: long\r\n\r\n" + b"y" * 999 + b"\r\n.\r\n")
        code, text = c.reply()
        self.assertEqual(code, 550)
        self.assertIn("1000", text)
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.net>")
        c.cmd("DATA")
        c.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n")
        code, text = c.reply()
        self.assertEqual(code, 550)
        self.assertIn("NUL", text)
        c.close()

    def test_unknown_commands_end_in_421(self):
        c = self.session()
        for i in range(4):
            self.assertEqual(c.cmd(f"FOO{i}")[0], 500)
        code, _ = c.cmd("BAR")
        self.assertEqual(code, 500)
        code, text = c.reply()
        self.assertEqual(code, 421)
        self.assertTrue(c.closed_by_peer())

    def test_client_that_never_reads_gets_backpressure(self):
        c = self.session()
        c.sock.settimeout(3)
        flood = b"NOOP\r\n" * 100000
        sent = 0
        with self.assertRaises(socket.timeout):
            for _ in range(100):  # up to 60 MB; the server must stop reading long before
                c.sock.sendall(flood)
                sent += len(flood)
        self.assertLess(sent, 30 * len(flood))
        with open(f"/proc/{self.mtad.proc.pid}/status") as f:
            rss_kb = int(next(l for l in f if l.startswith("VmRSS")).split()[1])
        self.assertLess(rss_kb, 300 * 1024)
        c.close()

    def test_sequence_errors(self):
        c = self.session()
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 503)  # before EHLO
        c.cmd("EHLO seq.example")
        self.assertEqual(c.cmd("RCPT TO:<b@example.net>")[0], 503)
        self.assertEqual(c.cmd("DATA")[0], 503)
        c.cmd("MAIL FROM:<a@example.com>")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com>")[0], 503)
        self.assertEqual(c.cmd("DATA")[0], 554)
        c.close()
        c = self.session()  # the error budget (max_errors=5) is spent: start over
        self.assertEqual(c.cmd("VRFY someone")[0], 252)
        self.assertEqual(c.cmd("HELP")[0], 214)
        self.assertEqual(c.cmd("RSET")[0], 250)
        c.close()


class TimeoutAndLimitsTest(unittest.TestCase):

    def test_command_timeout(self):
        m = Mtad(limits={"command_timeout_s": 1}).start()
        try:
            c = RawSmtp(m.port)
            c.sock.settimeout(10)
            code, text = c.reply()
            self.assertEqual((code, text[:5]), (421, "4.4.2"))
            self.assertTrue(c.closed_by_peer())
        finally:
            m.stop()

    def test_early_talker_rejected(self):
        m = Mtad(listener={"greeting_delay_ms": 700})
        m.start()
        try:
            c = RawSmtp(m.port, read_greeting=False)
            c.send(b"EHLO impatient.example\r\n")
            code, text = c.reply()
            self.assertEqual(code, 554)
            self.assertIn("before greeting", text)
            self.assertTrue(c.closed_by_peer())
            polite = RawSmtp(m.port)
            self.assertEqual(polite.greeting[0], 220)
            polite.close()
        finally:
            m.stop()

    def test_connections_per_ip(self):
        m = Mtad(limits={"max_connections_per_ip": 2}).start()
        try:
            time.sleep(0.2)  # the start-up probe connection must be gone
            a, b = RawSmtp(m.port), RawSmtp(m.port)
            c = RawSmtp(m.port)
            self.assertEqual(c.greeting[0], 421)
            a.close()
            time.sleep(0.2)
            d = RawSmtp(m.port)
            self.assertEqual(d.greeting[0], 220)
            b.close()
            d.close()
        finally:
            m.stop()

    def test_client_that_never_reads_is_dropped_after_the_timeout(self):
        m = Mtad(limits={"command_timeout_s": 2, "max_connections_per_ip": 1}).start()
        try:
            time.sleep(0.2)  # the start-up probe connection must be gone
            c = RawSmtp(m.port)
            c.sock.settimeout(2)
            flood = b"EHLO flood.example\r\n" * 50000
            # Our sends block once mtad stops reading (timeout), or fail once its command
            # timeout (the same 2 s) has already dropped us (reset): both are fine.
            with self.assertRaises((socket.timeout, ConnectionError)):
                for _ in range(200):
                    c.sock.sendall(flood)
            # The slot is taken while the stuck connection lives; it must be freed by the
            # timeout even though our replies can never be delivered.
            deadline = time.time() + 15
            while True:
                probe = RawSmtp(m.port)
                code = probe.greeting[0]
                probe.close()
                if code == 220:
                    break
                self.assertLess(time.time(), deadline, "stuck connection never dropped")
                time.sleep(0.5)
            c.close()
        finally:
            m.stop()

    def test_disk_floor_sheds_load_at_greeting(self):
        m = Mtad(spool={"min_free_disk_mb": 1 << 29})
        mtad, _ = harness.binaries()
        cfg = os.path.join(m.workdir, "mtad.yaml")
        with open(cfg, "w") as f:
            f.write(m.config_text())
        proc = subprocess.Popen([mtad, "--config", cfg, "--shards", "1"], cwd=m.workdir,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 10
            while True:
                try:
                    c = RawSmtp(m.port)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
            code, text = c.greeting
            self.assertEqual(code, 421)
            self.assertIn("free disk", text)
            with self.assertRaises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{m.http_port}/healthz", timeout=5)
            self.assertEqual(err.exception.code, 503)
            health = json.loads(err.exception.read())
            self.assertEqual(health["status"], "unhealthy")
            self.assertIn("free disk", health["spool_reason"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def test_spool_write_failure_answers_451_and_sheds(self):
        # A file-size limit makes RocksDB's WAL writes fail for real (EFBIG).
        limit = 3 * 1024 * 1024

        def preexec():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        m = Mtad(preexec_fn=preexec, limits={"max_message_bytes": 1 << 20}).start()
        try:
            body = b"Subject: fill\r\n\r\n" + (b"z" * 998 + b"\r\n") * 200
            outcomes = []
            for _ in range(40):
                c = RawSmtp(m.port)
                if c.greeting[0] != 220:
                    outcomes.append(c.greeting[0])
                    c.close()
                    break
                c.cmd("EHLO fill.example")
                c.cmd("MAIL FROM:<a@example.com>")
                c.cmd("RCPT TO:<b@example.net>")
                c.cmd("DATA")
                c.send(body + b".\r\n")
                outcomes.append(c.reply()[0])
                c.close()
                if outcomes[-1] != 250:
                    break
            self.assertIn(451, outcomes, outcomes)
            c = RawSmtp(m.port)
            self.assertEqual(c.greeting[0], 421)
            c.close()
        finally:
            m.kill9()


class LifecycleTest(unittest.TestCase):

    def test_graceful_shutdown_finishes_data_then_restart_recovers(self):
        m = Mtad().start()
        c = RawSmtp(m.port)
        c.cmd("EHLO life.example")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.net>")
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(MSG[:40])
        idle = RawSmtp(m.port)
        m.proc.send_signal(15)
        self.assertEqual(idle.reply()[0], 421)  # idle sessions are told at once
        time.sleep(0.3)
        c.send(MSG[40:] + b".\r\n")
        code, text = c.reply()
        self.assertEqual(code, 250, text)
        queue_id = text.split()[-1]
        self.assertEqual(c.cmd("NOOP")[0], 421)
        self.assertEqual(m.proc.wait(timeout=30), 0)
        m.proc = None
        records = m.dump()
        self.assertEqual([r["id"] for r in records], [queue_id])
        self.assertEqual(strip_received(records[0]["content"]), MSG)
        m.start()
        self.assertIn("recovered 1 messages", m.log())
        m.stop()

    def test_accepted_messages_survive_and_match(self):
        m = Mtad().start()
        sent = {}
        s = smtplib.SMTP("127.0.0.1", m.port, timeout=10)
        for i in range(20):
            msg = MSG.replace(b"fixed-1", b"m%d" % i) + b"extra %d\r\n" % i
            s.ehlo("a.example")
            s.mail("sender@example.com")
            s.rcpt(f"r{i}@example.net")
            s.rcpt(f"s{i}@example.org")
            code, text = s.data(msg)
            self.assertEqual(code, 250)
            sent[text.decode().split()[-1]] = msg
        s.quit()
        self.assertEqual(m.stop(), 0)
        records = {r["id"]: r for r in m.dump()}
        self.assertEqual(set(records), set(sent))
        for qid, msg in sent.items():
            self.assertEqual(strip_received(records[qid]["content"]), msg)
            self.assertEqual(len(records[qid]["recipients"]), 2)


class HeaderTest(unittest.TestCase):

    def send_bare(self, m):
        c = RawSmtp(m.port)
        c.cmd("EHLO hdr.example")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.net>")
        c.cmd("DATA")
        c.send(b"Subject: no ids\r\n\r\nbody\r\n.\r\n")
        code, text = c.reply()
        self.assertEqual(code, 250, text)
        c.close()
        return text.split()[-1]

    def test_submission_role_adds_message_id_and_date(self):
        m = Mtad().start()
        qid = self.send_bare(m)
        m.stop()
        content = m.dump()[0]["content"]
        self.assertTrue(content.startswith(b"Received: from hdr.example ([127.0.0.1])\r\n"
                                           b"\tby mx.test.example (mtad) with ESMTP id " +
                                           qid.encode()), content)
        rest = strip_received(content)
        self.assertIn(b"Message-ID: <%s@mx.test.example>\r\n" % qid.encode(), rest)
        self.assertRegex(rest, rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n")
        self.assertTrue(rest.endswith(b"Subject: no ids\r\n\r\nbody\r\n"))

    def test_relay_role_leaves_headers_alone(self):
        m = Mtad(listener={"add_missing_headers": False}).start()
        self.send_bare(m)
        m.stop()
        self.assertEqual(strip_received(m.dump()[0]["content"]), b"Subject: no ids\r\n\r\nbody\r\n")


class HttpTest(unittest.TestCase):

    def test_healthz_reports_ok_and_queue(self):
        m = Mtad().start()
        try:
            send = smtplib.SMTP("127.0.0.1", m.port, timeout=10)
            send.sendmail("a@example.com", ["b@example.net"], MSG)
            send.quit()
            with urllib.request.urlopen(f"http://127.0.0.1:{m.http_port}/healthz",
                                        timeout=5) as r:
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers["Content-Type"], "application/json")
                health = json.loads(r.read())
            self.assertEqual(health["status"], "ok")
            self.assertEqual(health["shards"], 2)
            with self.assertRaises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{m.http_port}/nope", timeout=5)
            self.assertEqual(err.exception.code, 404)
        finally:
            m.stop()


class ConfigCliTest(unittest.TestCase):

    def test_check_config_reports_file_line_and_reason(self):
        mtad, _ = harness.binaries()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("limits:\n  max_recipients: 0\n")
        out = subprocess.run([mtad, "--check-config", f.name], capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertIn(f"{f.name}:2:", out.stderr)
        self.assertIn("max_recipients", out.stderr)

    def test_printed_default_config_is_valid(self):
        mtad, _ = harness.binaries()
        text = subprocess.run([mtad, "--print-default-config"], capture_output=True, text=True,
                              check=True).stdout
        self.assertIn("max_message_bytes", text)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        out = subprocess.run([mtad, "--check-config", f.name], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)


if __name__ == "__main__":
    harness.main()
