"""SMTP AUTH against a real mtad: smtplib, raw sockets and swaks; the password file is made
with mtactl. The listener is trusted (loopback), so AUTH is offered in plain text; TLS-based
AUTH is covered with inbound TLS."""

import base64
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import harness
from harness import Mtad, RawSmtp

PASSWORDS = {"alice": "alice-secret", "bob": "bob pw with spaces", "victim": "victim-pw",
             "carol": "carol-pw"}
STREAMS = [{"name": "default"}, {"name": "transactional"}, {"name": "marketing"}]


def mtactl():
    return harness._find_binary("MTACTL", "tools/mtactl/mtactl")


def passwd(*args, password):
    return subprocess.run([mtactl(), "passwd", *args], input=password + "\n",
                          capture_output=True, text=True, timeout=60)


def make_password_file(workdir):
    path = os.path.join(workdir, "users.pw")
    for user, extra in (("alice", ["--domains", "example.com,example.org",
                                   "--stream", "transactional"]),
                        ("bob", []),
                        ("victim", ["--domains", "example.com"])):
        out = passwd("add", path, user, *extra, password=PASSWORDS[user])
        assert out.returncode == 0, out.stderr
    return path


def auth_mtad(workdir, trusted=True, max_failures=3):
    return Mtad(workdir=workdir, shards=1,  # failure counts are per shard: one makes them exact
                listener={"relay_networks": [], "stream_header": "X-Stream",
                          "auth": {"enabled": True, "trusted": trusted}},
                sections={"streams": STREAMS,
                          "auth": {"password_file": os.path.join(workdir, "users.pw"),
                                   "max_failures": max_failures, "failure_window": "5m"}})


def client(port, source="127.0.0.1"):
    s = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0))
    s.ehlo("client.test")
    return s


def send(s, sender, rcpt="someone@remote.example", headers=""):
    """MAIL/RCPT/DATA; returns the queue id."""
    code, text = s.mail(sender)
    assert code == 250, (code, text)
    code, text = s.rcpt(rcpt)
    assert code == 250, (code, text)
    code, text = s.data(f"{headers}From: <{sender}>\r\nSubject: t\r\n\r\nbody\r\n".encode())
    assert code == 250, (code, text)
    return text.decode().split()[-1]


class SourcedSmtp(RawSmtp):
    """RawSmtp from a chosen loopback address: failure limits count per client address."""

    def __init__(self, port, source):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                             source_address=(source, 0))
        self.buf = b""
        self.greeting = self.reply()


def raw(port, source):
    return SourcedSmtp(port, source)


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class AuthTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="mtad-auth-")
        make_password_file(cls.workdir)
        cls.mtad = auth_mtad(cls.workdir).start()

    @classmethod
    def tearDownClass(cls):
        cls.mtad.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_ehlo_advertises_plain_and_login(self):
        s = client(self.mtad.port)
        self.assertTrue(s.has_extn("auth"))
        self.assertEqual(s.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
        s.quit()

    def test_plain_and_login_success_allow_relay(self):
        for mechanism in ("PLAIN", "LOGIN"):
            s = client(self.mtad.port)
            s.user, s.password = "alice", PASSWORDS["alice"]
            authobject = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            # LOGIN in its challenge form; PLAIN with an initial response (smtplib default).
            code, text = s.auth(mechanism, authobject,
                                initial_response_ok=mechanism == "PLAIN")
            self.assertEqual((code, text), (235, b"2.7.0 Authentication successful"))
            send(s, "alice@example.com")
            s.quit()

    def test_smtplib_login_and_wrong_password(self):
        s = client(self.mtad.port)
        self.assertEqual(s.login("bob", PASSWORDS["bob"])[0], 235)
        send(s, "anyone@anywhere.example")  # bob's domains are '*'
        # A second AUTH in the same session is refused.
        self.assertEqual(s.docmd("AUTH", "PLAIN " + plain("bob", "x"))[0], 503)
        s.quit()
        s = client(self.mtad.port, source="127.0.0.20")
        with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
            s.login("bob", "not bob's password")
        self.assertEqual(e.exception.smtp_code, 535)
        self.assertEqual(e.exception.smtp_error, b"5.7.8 Authentication credentials invalid")
        s.quit()
        self.assertIn('auth: failed login for user "bob" from 127.0.0.20', self.mtad.log())

    def test_unauthenticated_clients_cannot_relay(self):
        s = client(self.mtad.port)
        self.assertEqual(s.mail("alice@example.com")[0], 250)
        code, text = s.rcpt("someone@remote.example")
        self.assertEqual(code, 554)
        self.assertIn(b"5.7.1", text)
        self.assertIn(b"Relay access denied", text)
        s.quit()

    def test_sender_domains_are_enforced(self):
        s = client(self.mtad.port)
        s.login("alice", PASSWORDS["alice"])
        self.assertEqual(s.mail("alice@other.example"),
                         (553, b"5.7.1 Sender address not allowed for this user"))
        self.assertEqual(s.mail("<>")[0], 553)
        send(s, "alice@Example.ORG")
        s.quit()

    def test_cancel_base64_errors_and_mail_auth_parameter(self):
        c = raw(self.mtad.port, "127.0.0.30")
        c.cmd("EHLO client.test")
        self.assertEqual(c.cmd("AUTH LOGIN"), (334, "VXNlcm5hbWU6"))
        self.assertEqual(c.cmd("*"), (501, "5.0.0 Authentication cancelled"))
        self.assertEqual(c.cmd("AUTH PLAIN not-base64!"), (501, "5.5.2 Error: invalid base64 data"))
        self.assertEqual(c.cmd("AUTH DIGEST-MD5")[0], 504)
        # AUTH= on MAIL is accepted (RFC 4954 section 5) but does not authenticate.
        self.assertEqual(c.cmd("MAIL FROM:<a@example.com> AUTH=alice+40example.com")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<x@remote.example>")[0], 554)
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORDS["alice"]))[0], 503)
        c.cmd("RSET")
        # The whole exchange pipelined in one write, commands after it included.
        c.send(f"AUTH PLAIN {plain('alice', PASSWORDS['alice'])}\r\nMAIL FROM:<a@example.com>\r\n"
               "RCPT TO:<x@remote.example>\r\n".encode())
        self.assertEqual(c.reply(), (235, "2.7.0 Authentication successful"))
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual(c.reply()[0], 250)
        c.cmd("QUIT")
        c.close()

    def test_swaks_plain_and_login(self):
        for mechanism, user in (("PLAIN", "alice"), ("LOGIN", "bob")):
            out = subprocess.run(
                ["swaks", "--server", f"127.0.0.1:{self.mtad.port}", "--helo", "swaks.test",
                 "--auth", mechanism, "--auth-user", user, "--auth-password", PASSWORDS[user],
                 "--from", f"{user}@example.com", "--to", "rcpt@remote.example"],
                capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertIn("235 2.7.0 Authentication successful", out.stdout)
            self.assertRegex(out.stdout, r"250 2\.0\.0 Ok: queued as [0-9a-f]{20}")
        out = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.mtad.port}", "--helo", "swaks.test",
             "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong",
             "--from", "alice@example.com", "--to", "rcpt@remote.example"],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("535 5.7.8 Authentication credentials invalid", out.stdout)

    def test_failures_are_rate_limited_per_client_address(self):
        source = "127.0.0.9"
        for _ in range(3):
            c = raw(self.mtad.port, source)
            c.cmd("EHLO client.test")
            self.assertEqual(c.cmd("AUTH PLAIN " + plain("nobody", "guess"))[0], 535)
            c.close()
        # The address is blocked, even for a valid password, until the window passes.
        c = raw(self.mtad.port, source)
        c.cmd("EHLO client.test")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORDS["alice"])),
                         (454, "4.7.0 Temporary authentication failure"))
        c.close()
        # Other addresses are not, and neither is alice.
        c = raw(self.mtad.port, "127.0.0.10")
        c.cmd("EHLO client.test")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("alice", PASSWORDS["alice"]))[0], 235)
        c.close()
        log = self.mtad.log()
        self.assertEqual(log.count('auth: failed login for user "nobody" from 127.0.0.9'), 3, log)
        self.assertIn("refused: too many failed attempts", log)

    def test_failures_are_rate_limited_per_user(self):
        for i in range(3):  # three addresses, one failure each
            c = raw(self.mtad.port, f"127.0.0.{40 + i}")
            c.cmd("EHLO client.test")
            self.assertEqual(c.cmd("AUTH PLAIN " + plain("victim", "guess"))[0], 535)
            c.close()
        c = raw(self.mtad.port, "127.0.0.50")
        c.cmd("EHLO client.test")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("victim", PASSWORDS["victim"]))[0], 454)
        # The same address may still authenticate as someone else.
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("bob", PASSWORDS["bob"]))[0], 235)
        c.close()

    def test_mtactl_check_and_sighup_reload(self):
        path = os.path.join(self.workdir, "users.pw")
        self.assertEqual(passwd("check", path, "alice", password=PASSWORDS["alice"]).returncode, 0)
        self.assertEqual(passwd("check", path, "alice", password="nope").returncode, 1)
        self.assertEqual(passwd("check", path, "zed", password="nope").returncode, 1)
        out = passwd("add", path, "carol", "--stream", "marketing", password=PASSWORDS["carol"])
        self.assertEqual(out.returncode, 0, out.stderr)
        c = raw(self.mtad.port, "127.0.0.60")
        c.cmd("EHLO client.test")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("carol", PASSWORDS["carol"]))[0], 535)
        c.close()
        self.mtad.reload()
        deadline = time.time() + 10
        while "SIGHUP: password file" not in self.mtad.log() and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn("SIGHUP: password file", self.mtad.log())
        c = raw(self.mtad.port, "127.0.0.61")
        c.cmd("EHLO client.test")
        self.assertEqual(c.cmd("AUTH PLAIN " + plain("carol", PASSWORDS["carol"]))[0], 235)
        c.close()


class UntrustedListenerTest(unittest.TestCase):
    """Without TLS and without `trusted`, AUTH is neither offered nor accepted."""

    def test_auth_requires_encryption(self):
        workdir = tempfile.mkdtemp(prefix="mtad-auth-")
        make_password_file(workdir)
        m = auth_mtad(workdir, trusted=False).start()
        try:
            s = client(m.port)
            self.assertFalse(s.has_extn("auth"))
            s.close()
            c = raw(m.port, "127.0.0.1")
            c.cmd("EHLO client.test")
            self.assertEqual(
                c.cmd("AUTH PLAIN " + plain("alice", PASSWORDS["alice"])),
                (538, "5.7.11 Encryption required for requested authentication mechanism"))
            self.assertEqual(c.cmd("AUTH LOGIN")[0], 538)
            c.close()
        finally:
            m.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def test_auth_after_starttls_allows_relay(self):
        workdir = tempfile.mkdtemp(prefix="mtad-auth-")
        make_password_file(workdir)
        cert, key = os.path.join(workdir, "c.pem"), os.path.join(workdir, "k.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", cert, "-days", "1", "-subj", "/CN=mx.test.example"],
                       check=True, capture_output=True)
        m = auth_mtad(workdir, trusted=False)
        m.listener.update({"tls": "starttls", "tls_cert_file": cert, "tls_key_file": key})
        m.start()
        try:
            s = client(m.port)
            self.assertFalse(s.has_extn("auth"))
            self.assertEqual(s.docmd("AUTH", "PLAIN " + plain("alice", PASSWORDS["alice"]))[0],
                             538)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("client.test")
            self.assertIn("PLAIN", s.esmtp_features.get("auth", "").upper())
            self.assertEqual(s.login("alice", PASSWORDS["alice"])[0], 235)
            self.assertEqual(s.mail("a@example.com")[0], 250)
            self.assertEqual(s.rcpt("someone@remote.example")[0], 250)  # relay: authenticated
            s.quit()
        finally:
            m.stop()
            shutil.rmtree(workdir, ignore_errors=True)


class SpoolTest(unittest.TestCase):
    """The user's stream and name reach the spool."""

    def test_stream_and_auth_user_are_spooled(self):
        workdir = tempfile.mkdtemp(prefix="mtad-auth-")
        make_password_file(workdir)
        m = auth_mtad(workdir).start()
        try:
            s = client(m.port)
            s.login("alice", PASSWORDS["alice"])
            # alice's stream wins over the header (which is still removed).
            alice = send(s, "alice@example.com", headers="X-Stream: marketing\r\n")
            s.quit()
            s = client(m.port)
            s.login("bob", PASSWORDS["bob"])
            bob_header = send(s, "bob@example.net", headers="X-Stream: marketing\r\n")
            bob_default = send(s, "bob@example.net")
            s.quit()
        finally:
            self.assertEqual(m.stop(), 0)
        records = {r["id"]: r for r in m.dump()}
        self.assertEqual(records[alice]["stream"], "transactional")
        self.assertEqual(records[alice]["auth_user"], "alice")
        self.assertNotIn(b"X-Stream", records[alice]["content"])
        self.assertEqual(records[bob_header]["stream"], "marketing")
        self.assertEqual(records[bob_header]["auth_user"], "bob")
        self.assertEqual(records[bob_default]["stream"], "default")
        shutil.rmtree(workdir, ignore_errors=True)

    def test_bad_password_file_stops_start_up(self):
        workdir = tempfile.mkdtemp(prefix="mtad-auth-")
        with open(os.path.join(workdir, "users.pw"), "w") as f:
            f.write("# users\nalice:plain-text-password:*\n")
        m = auth_mtad(workdir)
        with self.assertRaises(RuntimeError) as e:
            m.start()
        self.assertIn("users.pw:2: password hash", str(e.exception))
        # A stream that does not exist is caught too.
        os.remove(os.path.join(workdir, "users.pw"))
        out = passwd("add", os.path.join(workdir, "users.pw"), "dan", "--stream", "nosuch",
                     password="pw")
        self.assertEqual(out.returncode, 0, out.stderr)
        with self.assertRaises(RuntimeError) as e:
            auth_mtad(workdir).start()
        self.assertIn("user 'dan': unknown stream 'nosuch'", str(e.exception))
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    harness.main()
