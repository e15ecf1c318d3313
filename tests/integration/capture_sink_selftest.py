#!/usr/bin/env python3
"""Self-test for capture_sink.py: starts it as a real process and talks to it with smtplib
(plain, pipelined and BDAT), raw sockets and STARTTLS. Run: python3 capture_sink_selftest.py
"""

import base64
import json
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = os.path.join(HERE, "capture_sink.py")

MSG = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: capture test\r\n\r\n"
       b"Hello.\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n")


class SinkProcess:
    """One capture_sink process; `ports` maps each listen address to its port."""

    def __init__(self, listen=("127.0.0.1",), extra=(), script=None):
        self.dir = tempfile.mkdtemp(prefix="capture-sink-test-")
        self.out = os.path.join(self.dir, "messages.jsonl")
        self.stats_path = os.path.join(self.dir, "stats.json")
        cmd = [sys.executable, SINK, "--out", self.out, "--stats", self.stats_path,
               "--hostname", "sink.test", "--max-size", "100000"]
        for host in listen:
            cmd += ["--listen", f"{host}:0"]
        if script is not None:
            cmd += ["--script", json.dumps(script)]
        cmd += list(extra)
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr)
        self.ports = {}
        for _ in listen:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("capture_sink did not start: " + self.log())
            event = json.loads(line)
            self.ports[event["address"]] = event["port"]

    def port(self, host="127.0.0.1"):
        return self.ports[host]

    def smtp(self, host="127.0.0.1"):
        return smtplib.SMTP(host, self.port(host), local_hostname="client.test", timeout=10)

    def records(self, kind="message"):
        if not os.path.exists(self.out):
            return []
        with open(self.out, encoding="utf-8") as f:
            return [r for r in map(json.loads, f) if r["type"] == kind]

    def wait_records(self, kind, n, timeout=5):
        deadline = time.time() + timeout
        while time.time() < deadline:
            recs = self.records(kind)
            if len(recs) >= n:
                return recs
            time.sleep(0.02)
        raise AssertionError(f"expected {n} {kind} records, got {self.records(kind)}")

    def stats(self):
        with open(self.stats_path, encoding="utf-8") as f:
            return json.load(f)

    def log(self):
        with open(os.path.join(self.dir, "stderr.log"), errors="replace") as f:
            return f.read()

    def stop(self):
        """Stops the sink; returns (exit status, its stderr)."""
        self.proc.terminate()
        rc = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.stderr.close()
        log = self.log()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc, log


def data_of(rec):
    return base64.b64decode(rec["data_b64"])


class CaptureSinkTest(unittest.TestCase):

    def start(self, **kwargs):
        sink = SinkProcess(**kwargs)
        def stop():
            rc, log = sink.stop()
            self.assertEqual(rc, 0, log)
            self.assertNotIn("Error", log)  # the sink logs its own bugs to stderr
        self.addCleanup(stop)
        return sink

    def test_smtplib_messages_are_recorded_exactly(self):
        sink = self.start()
        s = sink.smtp()
        code, _ = s.ehlo()
        self.assertEqual(code, 250)
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                    "chunking", "dsn"):
            self.assertTrue(s.has_extn(ext), ext)
        self.assertFalse(s.has_extn("starttls"))
        self.assertEqual(s.esmtp_features["size"], "100000")
        s.sendmail("a@example.com", ["b@example.net", "c@example.net"], MSG,
                   mail_options=["RET=HDRS", "ENVID=abc+2Bdef", "BODY=8BITMIME"],
                   rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
        s.sendmail("", ["d@example.net"], b"Subject: second\r\n\r\n8-bit: caf\xc3\xa9\r\n")
        client_ip, client_port = s.sock.getsockname()
        s.quit()
        first, second = sink.records()
        self.assertEqual(data_of(first), MSG)  # smtplib dot-stuffed, the sink un-stuffed
        self.assertEqual(first["mail_from"], "a@example.com")
        self.assertEqual(first["rcpt_to"], ["b@example.net", "c@example.net"])
        self.assertEqual(first["mail_params"],
                         {"RET": "HDRS", "ENVID": "abc+2Bdef", "BODY": "8BITMIME",
                          "SIZE": str(len(MSG))})
        self.assertEqual(first["rcpt_params"], [{"NOTIFY": "SUCCESS,FAILURE"}] * 2)
        self.assertEqual(first["transfer"], "DATA")
        self.assertEqual(first["size"], len(MSG))
        self.assertEqual((first["peer_ip"], first["peer_port"]), (client_ip, client_port))
        self.assertEqual((first["local_ip"], first["local_port"]), ("127.0.0.1", sink.port()))
        self.assertEqual(first["helo"], "client.test")
        self.assertIsNone(first["tls"])
        self.assertEqual((first["conn_id"], first["msg_index"]), (1, 1))
        self.assertEqual((second["conn_id"], second["msg_index"]), (1, 2))
        self.assertEqual(second["mail_from"], "")
        self.assertEqual(data_of(second), b"Subject: second\r\n\r\n8-bit: caf\xc3\xa9\r\n")
        self.assertLessEqual(first["timestamp"], second["timestamp"])
        self.assertTrue(first["time"].endswith("Z"))
        [conn] = sink.wait_records("connection", 1)
        self.assertEqual(conn["messages"], 2)
        self.assertIsNone(conn["rejected"])

    def test_pipelined_transaction(self):
        sink = self.start(script={"rules": [
            {"command": "RCPT", "match": "^<unknown@", "reply": "550 5.1.1 No such user"}]})
        s = sink.smtp()
        s.ehlo()
        # One write holding MAIL, three RCPTs and DATA (RFC 2920), then the replies in order.
        s.send("MAIL FROM:<a@example.com> SIZE=100\r\nRCPT TO:<b@example.net>\r\n"
               "RCPT TO:<unknown@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        replies = [s.getreply() for _ in range(5)]
        self.assertEqual([code for code, _ in replies], [250, 250, 550, 250, 354])
        self.assertEqual(replies[2][1], b"5.1.1 No such user")
        s.send(b"Subject: p\r\n\r\n..dot\r\n.\r\nRSET\r\nNOOP\r\n")
        self.assertEqual([s.getreply()[0] for _ in range(3)], [250, 250, 250])
        s.quit()
        [rec] = sink.records()
        self.assertEqual(rec["rcpt_to"], ["b@example.net", "c@example.net"])
        self.assertEqual(data_of(rec), b"Subject: p\r\n\r\n.dot\r\n")

    def test_bdat(self):
        sink = self.start()
        s = sink.smtp()
        s.ehlo()
        chunk1 = b"Subject: chunked\r\n\r\n.no un-stuffing in BDAT\r\n"
        chunk2 = b".\r\nend\r\n"
        s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
               + b"BDAT %d\r\n" % len(chunk1) + chunk1
               + b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        replies = [s.getreply() for _ in range(4)]
        self.assertEqual([code for code, _ in replies], [250, 250, 250, 250])
        self.assertEqual(replies[2][1], b"2.0.0 %d octets received" % len(chunk1))
        self.assertTrue(replies[3][1].startswith(b"2.0.0 Ok: queued as 1.1"), replies[3])
        # BDAT without a transaction: the chunk is read and refused; the session goes on.
        s.send(b"BDAT 5 LAST\r\nhello")
        self.assertEqual(s.getreply()[0], 503)
        self.assertEqual(s.noop()[0], 250)
        s.quit()
        [rec] = sink.records()
        self.assertEqual(rec["transfer"], "BDAT")
        self.assertEqual(data_of(rec), chunk1 + chunk2)

    def test_strict_data_framing(self):
        sink = self.start()
        s = sink.smtp()
        s.ehlo()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        self.assertEqual([s.getreply()[0] for _ in range(3)], [250, 250, 354])
        # "\n.\n" is not an end of data; only CRLF.CRLF is.
        s.send(b"line\n.\nmore\r\n.\r\n")
        self.assertEqual(s.getreply()[0], 250)
        s.quit()
        [rec] = sink.records()
        self.assertEqual(data_of(rec), b"line\n.\nmore\r\n")

    def test_size_and_smtputf8_checks(self):
        sink = self.start()
        s = sink.smtp()
        s.ehlo()
        self.assertEqual(s.docmd("MAIL FROM:<a@example.com> SIZE=100001")[0], 552)
        s.send("MAIL FROM:<j\xf6rg@example.com>\r\n".encode())  # UTF-8 without SMTPUTF8
        self.assertEqual(s.getreply()[0], 553)
        s.sendmail("j\xf6rg@example.com", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n",
                   mail_options=["SMTPUTF8"])
        s.quit()
        [rec] = sink.records()
        self.assertEqual(rec["mail_from"], "j\xf6rg@example.com")
        self.assertIn("SMTPUTF8", rec["mail_params"])

    def test_script_rules(self):
        sink = self.start(script={"rules": [
            {"command": "RCPT", "match": "grey", "reply": "450 4.2.0 Greylisted", "times": 2},
            {"command": "RCPT", "match": "^<nobody@", "reply": "550 5.1.1 No such user"},
            {"command": "MAIL", "match": "slow@", "delay": 0.3},
            {"command": "DOT", "match": "X-Spam: yes", "reply": "554 5.7.1 Spam"},
        ]})
        s = sink.smtp()
        s.ehlo()
        s.docmd("MAIL FROM:<a@example.com>")
        # Greylisting counts per recipient: two 450s each, then 250.
        codes = [s.docmd("RCPT TO:<grey1@example.net>")[0] for _ in range(3)]
        codes += [s.docmd("RCPT TO:<grey2@example.net>")[0] for _ in range(3)]
        self.assertEqual(codes, [450, 450, 250, 450, 450, 250])
        self.assertEqual(s.docmd("RCPT TO:<nobody@example.net>"),
                         (550, b"5.1.1 No such user"))
        self.assertEqual(s.data(b"X-Spam: yes\r\n\r\nbuy\r\n")[0], 554)
        started = time.monotonic()
        self.assertEqual(s.docmd("MAIL FROM:<slow@example.com>")[0], 250)
        self.assertGreaterEqual(time.monotonic() - started, 0.29)
        s.docmd("RCPT TO:<grey1@example.net>")
        self.assertEqual(s.data(b"Subject: ok\r\n\r\nfine\r\n")[0], 250)
        s.quit()
        [rec] = sink.records()  # the spam was refused, not recorded
        self.assertEqual(rec["mail_from"], "slow@example.com")
        self.assertEqual(rec["msg_index"], 1)

    def test_record_refusals(self):
        sink = self.start(extra=["--record-refusals"], script={"rules": [
            {"command": "RCPT", "match": "^<full@", "reply": "452 4.2.2 Mailbox full"},
            {"command": "RCPT", "match": "^<nobody@", "reply": "550 5.1.1 No such user"},
            {"command": "DOT", "match": "X-Spam: yes", "reply": "554 5.7.1 Spam"},
        ]})
        s = sink.smtp()
        s.ehlo()
        s.docmd("MAIL FROM:<a@example.com>")
        self.assertEqual(s.docmd("RCPT TO:<full@example.net>")[0], 452)
        self.assertEqual(s.docmd("RCPT TO:<nobody@example.net>")[0], 550)
        self.assertEqual(s.docmd("RCPT TO:<b@example.net>")[0], 250)
        self.assertEqual(s.data(b"X-Spam: yes\r\n\r\nbuy\r\n")[0], 554)
        s.quit()
        refusals = sink.records("refusal")
        self.assertEqual([(r["command"], r["arg"], r["reply"]) for r in refusals],
                         [("RCPT", "<full@example.net>", "452 4.2.2 Mailbox full"),
                          ("RCPT", "<nobody@example.net>", "550 5.1.1 No such user"),
                          ("DOT", "", "554 5.7.1 Spam")])
        self.assertEqual({r["conn_id"] for r in refusals}, {1})
        # Without the option nothing but messages and connections is recorded.
        plain = self.start(script={"rules": [
            {"command": "RCPT", "match": "^<nobody@", "reply": "550 5.1.1 No such user"}]})
        s = plain.smtp()
        s.ehlo()
        s.docmd("MAIL FROM:<a@example.com>")
        self.assertEqual(s.docmd("RCPT TO:<nobody@example.net>")[0], 550)
        s.quit()
        plain.wait_records("connection", 1)
        self.assertEqual(plain.records("refusal"), [])

    def test_several_loopback_addresses_and_greeting_421(self):
        sink = self.start(listen=("127.0.0.1", "127.0.0.2"), script={"rules": [
            {"command": "CONNECT", "local": "127.0.0.2", "reply": "421 4.7.0 Busy"}]})
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            sink.smtp("127.0.0.2")
        self.assertEqual(cm.exception.smtp_code, 421)
        s = sink.smtp("127.0.0.1")
        s.sendmail("a@example.com", ["b@example.net"], MSG)
        s.quit()
        [rec] = sink.records()
        self.assertEqual(rec["local_ip"], "127.0.0.1")
        conns = sink.wait_records("connection", 2)
        self.assertEqual(sorted(c["local_ip"] for c in conns), ["127.0.0.1", "127.0.0.2"])
        self.assertEqual([c["rejected"] for c in conns if c["local_ip"] == "127.0.0.2"],
                         ["421 4.7.0 Busy"])

    def test_greeting_554_serves_only_quit(self):
        sink = self.start(script={"rules": [
            {"command": "CONNECT", "reply": "554 5.7.1 No service"}]})
        sock = socket.create_connection(("127.0.0.1", sink.port()), timeout=10)
        f = sock.makefile("rb")
        self.assertTrue(f.readline().startswith(b"554 "))
        sock.sendall(b"EHLO x\r\nQUIT\r\n")
        self.assertTrue(f.readline().startswith(b"503 "))
        self.assertTrue(f.readline().startswith(b"221 "))
        sock.close()

    def test_max_connections(self):
        sink = self.start(extra=["--max-connections", "2"])
        a, b = sink.smtp(), sink.smtp()
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            sink.smtp()
        self.assertEqual(cm.exception.smtp_code, 421)
        a.quit()
        c = sink.smtp()  # a slot is free again
        for s in (b, c):
            s.quit()
        sink.wait_records("connection", 4)
        stats = sink.stats()
        self.assertEqual(stats["max_concurrent"], 2)
        self.assertEqual(stats["connections_rejected"], 1)
        self.assertEqual(stats["connections_total"], 4)

    def make_cert(self):
        if shutil.which("openssl") is None:
            self.skipTest("openssl not installed")
        d = tempfile.mkdtemp(prefix="capture-sink-cert-")
        self.addCleanup(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", cert, "-days", "2", "-subj", "/CN=sink.test"],
                       check=True, capture_output=True, timeout=60)
        return cert, key

    def test_starttls(self):
        cert, key = self.make_cert()
        sink = self.start(extra=["--tls-cert", cert, "--tls-key", key])
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = sink.smtp()
        s.ehlo()
        self.assertTrue(s.has_extn("starttls"))
        self.assertEqual(s.starttls(context=ctx)[0], 220)
        s.ehlo()
        self.assertFalse(s.has_extn("starttls"))  # not offered again inside TLS
        s.sendmail("a@example.com", ["b@example.net"], MSG)
        s.quit()
        [rec] = sink.records()
        self.assertEqual(data_of(rec), MSG)
        self.assertIn(rec["tls"]["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertTrue(rec["tls"]["cipher"])
        self.assertGreater(rec["tls"]["bits"], 0)

    def test_starttls_discards_pipelined_plaintext(self):
        cert, key = self.make_cert()
        sink = self.start(extra=["--tls-cert", cert, "--tls-key", key])
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", sink.port()), timeout=10)
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nNOOP\r\n")  # the NOOP is an injection attempt
        self.assertTrue(f.readline().startswith(b"220 "))
        tls = ctx.wrap_socket(raw, server_hostname="sink.test")
        tls.sendall(b"QUIT\r\n")
        self.assertTrue(tls.recv(100).startswith(b"221 "))  # not a reply to NOOP
        tls.close()
        [conn] = sink.wait_records("connection", 1)
        self.assertEqual(conn["starttls_discarded_bytes"], len(b"NOOP\r\n"))
        self.assertIsNotNone(conn["tls"])

    def test_bad_script_is_refused(self):
        r = subprocess.run([sys.executable, SINK, "--listen", "127.0.0.1:0", "--out",
                            os.devnull, "--script", '{"rules": [{"command": "BOGUS"}]}'],
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"command must be one of", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
