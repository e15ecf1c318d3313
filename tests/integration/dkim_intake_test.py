"""DKIM signing at intake, end to end: mtad signs mail from example.com (dual: RSA-2048 and
Ed25519, keys made by the openssl CLI) before spooling it and delivers it to capture_sink.py;
every delivered message is checked with python3-dkim against the public keys published as TXT
records in a real nsd. Mail from other domains arrives unsigned; a bad key file stops mtad
(and --check-config) with a message naming the file; a bad key on SIGHUP keeps the old keys.
"""

import base64
import os
import re
import smtplib
import subprocess
import sys
import tempfile
import unittest

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import dkim
    import dns.resolver
except ImportError:
    # python3-dkim and python3-dnspython are Debian packages (see dkim_verify_test.py).
    if os.path.exists(SYSTEM_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(
            SYSTEM_PYTHON):
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, "-u", os.path.abspath(__file__)] + sys.argv[1:])
    raise

sys.path.insert(0, HERE)
import dns_server  # noqa: E402
import harness  # noqa: E402
from delivery_test import Sink, wait_for  # noqa: E402
from dkim_verify_test import openssl, public_record, zone_text  # noqa: E402

DOMAIN = "example.com"


def crlf(*lines):
    return b"".join(line + b"\r\n" for line in lines)


def base(tag, sender=b"x@example.com"):
    return [b"From: X <" + sender + b">", b"To: r@dest.test",
            b"Message-ID: <" + tag.encode() + b"@example.com>",
            b"Date: Fri, 04 Dec 2026 10:00:00 +0000"]


MESSAGES = {
    "folded_headers": crlf(
        b"From: Alice Example",
        b" <x@example.com>",
        b"To: r@dest.test,",
        b"\tcarol@dest.test",
        b"Subject: a subject that is folded",
        b" over three",
        b"\tlines",
        b"Message-ID: <folded@example.com>",
        b"Content-Type: text/plain;",
        b"  charset=us-ascii",
        b"",
        b"Hello."),
    "eight_bit": crlf(
        *base("eight_bit"),
        b"Subject: 8-bit body",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln, \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
        b"raw latin-1 bytes: \xe9\xe8\xff"),
    "trailing_whitespace": crlf(
        *base("trailing_whitespace"),
        b"Subject:   spaces  \t inside and at the end \t ",
        b"",
        b"line one   ",
        b"line\t\ttwo \t",
        b"   ",
        b"",
        b" ",
        b""),
    "empty_body": crlf(*base("empty_body"), b"Subject: nothing to say", b""),
    "long_lines": crlf(
        *base("long_lines"),
        b"Subject: " + b" ".join(b"word%d" % i for i in range(60)),
        b"",
        b"x" * 998,
        *[(b"%06d " % i) + b"abcdefghij" * 7 for i in range(2000)],
        b"y" * 997 + b" "),
    "no_date_or_message_id": crlf(  # mtad adds both before signing
        b"From: <X@Example.COM>", b"To: r@dest.test", b"Subject: headers added", b"", b"body"),
}


def send(port, content, sender="x@example.com", rcpt="r@dest.test"):
    """Sends with smtplib (BODY=8BITMIME); returns (code, text) of the final reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        code, text = c.mail(sender, ["BODY=8BITMIME"])
        assert code == 250, (code, text)
        code, text = c.rcpt(rcpt)
        assert code == 250, (code, text)
        return c.data(content)


def header_block(data):
    return data.split(b"\r\n\r\n", 1)[0]


def signature_fields(data):
    """The DKIM-Signature fields in the header block, unfolded, in order."""
    return [f for f in re.findall(rb"(?:^|\r\n)(DKIM-Signature:.*?)(?=\r\n[^ \t]|$)",
                                  header_block(data), re.S)]


class DkimIntakeTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dkim-intake-", dir=os.environ.get("TEST_TMPDIR"))
        cls.rsa = os.path.join(cls.dir, "rsa.pem")
        cls.ed = os.path.join(cls.dir, "ed.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
                cls.rsa)
        openssl("genpkey", "-algorithm", "ed25519", "-out", cls.ed)
        cls.bad = os.path.join(cls.dir, "bad.pem")
        with open(cls.bad, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        records = {"rsa1": public_record(cls.rsa), "ed1": public_record(cls.ed)}
        cls.nsd = dns_server.NsdServer({DOMAIN: zone_text(records)}).start()
        cls.addClassCleanup(cls.nsd.stop)
        cls.resolver = dns.resolver.Resolver(configure=False)
        cls.resolver.nameservers = ["127.0.0.1"]
        cls.resolver.port = cls.nsd.port

        port = harness.free_port()
        cls.sink = Sink(["127.0.0.2"], port)
        cls.addClassCleanup(cls.sink.stop)
        cls.mtad = harness.Mtad(
            server={"hostname": "mta.test"},
            delivery={"dns_servers": [cls.nsd.address()], "retry_intervals": "1s",
                      "routes": [{"domain": "*", "host": "127.0.0.2", "port": port,
                                  "tls": "none"}]},
            sections={"dkim": {"signing": cls.signing(cls.rsa)}})
        cls.mtad.start()
        cls.addClassCleanup(cls.mtad.stop)

    @classmethod
    def signing(cls, rsa_path):
        return [{"domain": "example.com", "selector": "rsa1", "key_file": rsa_path},
                {"domain": "example.com", "selector": "ed1", "key_file": cls.ed,
                 "canonicalization": "relaxed/simple", "expire": "7d"}]

    @classmethod
    def txt(cls, name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            answer = cls.resolver.resolve(name, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    def delivered(self, message_id):
        def find():
            for m in self.sink.messages():
                data = base64.b64decode(m["data_b64"])
                if message_id in header_block(data):
                    return data
            return None
        return wait_for(find, 30, f"delivery of {message_id!r}")

    def assert_dual_signed(self, data, name):
        fields = signature_fields(data)
        self.assertEqual(len(fields), 2, (name, header_block(data)[:2000]))
        # At the very top, above our Received: field.
        self.assertTrue(data.startswith(b"DKIM-Signature:"), name)
        algorithms = sorted(re.search(rb"a=([a-z0-9-]+)", f).group(1) for f in fields)
        self.assertEqual(algorithms, [b"ed25519-sha256", b"rsa-sha256"], name)
        self.assertTrue(dkim.verify(data, dnsfunc=self.txt), name)
        for i in range(2):
            self.assertTrue(dkim.DKIM(data).verify(idx=i, dnsfunc=self.txt), (name, i))
        # A changed byte breaks both signatures (the verifier really checks our bytes).
        at = data.index(b"Subject:") + len(b"Subject: ") + 1 if b"Subject:" in data else None
        tampered = data[:at] + b"Q" + data[at + 1:]
        for i in range(2):
            try:
                ok = dkim.DKIM(tampered).verify(idx=i, dnsfunc=self.txt)
            except dkim.DKIMException:
                ok = False
            self.assertFalse(ok, (name, i))

    def test_every_delivered_message_verifies_with_both_signatures(self):
        for name, content in MESSAGES.items():
            with self.subTest(name):
                code, text = send(self.mtad.port, content)
                self.assertEqual(code, 250, text)
                mid = re.search(rb"Message-ID: (<[^>]*>)", content)
                if mid is None:  # mtad added one: find the message by its subject
                    data = self.delivered(b"Subject: headers added")
                    self.assertIn(b"Message-ID:", header_block(data))
                    self.assertIn(b"Date:", header_block(data))
                else:
                    data = self.delivered(mid.group(1))
                    # Signed once, before the spool: the original follows our Received:.
                    self.assertTrue(data.endswith(content), name)
                self.assert_dual_signed(data, name)

    def test_other_domains_arrive_unsigned(self):
        content = crlf(*base("other", b"someone@other.test"), b"Subject: unsigned", b"",
                       b"body")
        code, text = send(self.mtad.port, content, sender="someone@other.test")
        self.assertEqual(code, 250, text)
        data = self.delivered(b"<other@example.com>")
        self.assertEqual(signature_fields(data), [])
        self.assertTrue(data.startswith(b"Received:"))
        # Subdomains are not signed with the parent's keys either.
        content = crlf(*base("sub", b"x@mail.example.com"), b"Subject: sub", b"", b"body")
        self.assertEqual(send(self.mtad.port, content, sender="x@mail.example.com")[0], 250)
        self.assertEqual(signature_fields(self.delivered(b"<sub@example.com>")), [])

    def test_from_header_chooses_the_key_not_the_envelope(self):
        content = crlf(*base("bounce_sender"), b"Subject: envelope elsewhere", b"", b"body")
        code, text = send(self.mtad.port, content, sender="bounces@esp.test")
        self.assertEqual(code, 250, text)
        self.assert_dual_signed(self.delivered(b"<bounce_sender@example.com>"), "envelope")

    def test_unsignable_message_is_refused_not_sent_unsigned(self):
        # No From: field: the envelope sender's domain has keys, but DKIM needs a From:.
        content = crlf(b"To: r@dest.test", b"Subject: no from",
                       b"Message-ID: <nofrom@example.com>", b"", b"body")
        code, text = send(self.mtad.port, content, sender="x@example.com")
        self.assertEqual(code, 451, text)
        self.assertIn(b"4.7.0 Message could not be signed", text)
        wait_for(lambda: "not signed" in self.mtad.log(), 10, "the log line")
        self.assertFalse([m for m in self.sink.messages()
                          if b"<nofrom@example.com>" in base64.b64decode(m["data_b64"])])

    def test_sighup_with_a_bad_key_keeps_the_old_keys(self):
        self.mtad.sections["dkim"] = {"signing": self.signing(self.bad)}
        try:
            self.mtad.reload()
            wait_for(lambda: "keeping the loaded DKIM keys" in self.mtad.log(), 10, "reload")
            self.assertIn("bad.pem", self.mtad.log())
            content = crlf(*base("after_reload"), b"Subject: after a bad reload", b"", b"x")
            self.assertEqual(send(self.mtad.port, content)[0], 250)
            self.assert_dual_signed(self.delivered(b"<after_reload@example.com>"), "reload")
        finally:
            self.mtad.sections["dkim"] = {"signing": self.signing(self.rsa)}
            self.mtad.reload()

    def test_bad_key_file_stops_start_up_and_check_config(self):
        for path, why in ((self.bad, "bad.pem"), (os.path.join(self.dir, "none.pem"),
                                                  "none.pem")):
            m = harness.Mtad(sections={"dkim": {"signing": self.signing(path)}})
            with self.assertRaises(RuntimeError) as raised:
                m.start(timeout=10)
            self.assertIn("dkim.signing[0] (rsa1._domainkey.example.com)", str(raised.exception))
            self.assertIn(why, str(raised.exception))
            mtad, _ = harness.binaries()
            check = subprocess.run([mtad, "--check-config", m.config_path], capture_output=True,
                                   text=True)
            self.assertNotEqual(check.returncode, 0)
            self.assertIn(why, check.stderr + check.stdout)
        ok = harness.Mtad(sections={"dkim": {"signing": self.signing(self.rsa)}})
        ok.write_config()
        mtad, _ = harness.binaries()
        check = subprocess.run([mtad, "--check-config", ok.config_path], capture_output=True,
                               text=True)
        self.assertEqual(check.returncode, 0, check.stderr)


if __name__ == "__main__":
    harness.main()
