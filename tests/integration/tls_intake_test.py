"""Inbound TLS end to end: a real mtad with a STARTTLS listener and an implicit-TLS
listener (RFC 8314), driven by Python's smtplib/ssl, swaks and raw sockets.

Certificates are made with the openssl command line for each run.
"""

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

HOST = "mx.test.example"


def make_cert(directory, name, cn=HOST):
    cert = os.path.join(directory, name + ".crt")
    key = os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % cn],
                   check=True, capture_output=True)
    return cert, key


def client_context(cafile=None, maximum=None, minimum=None):
    ctx = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.maximum_version = maximum
    if minimum is not None:
        ctx.minimum_version = minimum
    return ctx


def message(subject="tls test"):
    return ("From: a@example.com\r\nTo: b@example.net\r\nSubject: %s\r\n\r\nbody\r\n"
            % subject).encode()


class TlsIntakeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tls-intake-")
        cls.cert, cls.key = make_cert(cls.dir, "server")
        # The implicit listener has its own files: the reload test replaces them.
        cls.implicit_cert, cls.implicit_key = make_cert(cls.dir, "implicit")
        cls.starttls = harness.Mtad(listener={
            "tls": "starttls", "tls_cert_file": cls.cert, "tls_key_file": cls.key}).start()
        cls.implicit = harness.Mtad(listener={
            "tls": "implicit", "tls_cert_file": cls.implicit_cert,
            "tls_key_file": cls.implicit_key}).start()

    @classmethod
    def tearDownClass(cls):
        cls.starttls.stop()
        cls.implicit.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_starttls_with_smtplib_verifies_the_certificate_and_delivers(self):
        with smtplib.SMTP("127.0.0.1", self.starttls.port, local_hostname="client.test") as s:
            code, _ = s.ehlo()
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("starttls"))
            s.starttls(context=client_context(cafile=self.cert))
            # RFC 3207 4.2: the EHLO after TLS no longer offers STARTTLS.
            s.ehlo()
            self.assertFalse(s.has_extn("starttls"))
            self.assertIn(s.sock.version(), ("TLSv1.2", "TLSv1.3"))
            s.sendmail("a@example.com", ["b@example.net"], message("starttls"))

    def test_implicit_tls_with_smtplib(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.implicit.port, local_hostname="client.test",
                              context=client_context(cafile=self.implicit_cert)) as s:
            code, _ = s.ehlo()
            self.assertEqual(code, 250)
            self.assertFalse(s.has_extn("starttls"))
            s.sendmail("a@example.com", ["b@example.net"], message("implicit"))

    def test_messages_over_tls_are_spooled_with_esmtps_in_received(self):
        for mode in ("starttls", "implicit"):
            mtad = harness.Mtad(listener={
                "tls": mode, "tls_cert_file": self.cert, "tls_key_file": self.key}).start()
            try:
                if mode == "starttls":
                    s = smtplib.SMTP("127.0.0.1", mtad.port)
                    s.starttls(context=client_context())
                else:
                    s = smtplib.SMTP_SSL("127.0.0.1", mtad.port, context=client_context())
                s.sendmail("a@example.com", ["b@example.net"], message(mode))
                s.quit()
            finally:
                mtad.stop()
            contents = [m["content"].decode() for m in mtad.dump()]
            self.assertEqual(len(contents), 1)
            self.assertIn(" with ESMTPS id ", contents[0])
            self.assertIn("Subject: " + mode, contents[0])

    def test_swaks_over_starttls_and_implicit_tls(self):
        for mtad, flag in ((self.starttls, "--tls"), (self.implicit, "--tlsc")):
            out = subprocess.run(
                ["swaks", "--server", "127.0.0.1", "--port", str(mtad.port), flag,
                 "--from", "a@example.com", "--to", "b@example.net", "--helo", "swaks.test",
                 "--header", "Subject: swaks " + flag, "--timeout", "10"],
                capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertIn("250 2.0.0 Ok: queued as", out.stdout)

    def test_plain_text_pipelined_after_starttls_is_never_executed(self):
        raw = socket.create_connection(("127.0.0.1", self.starttls.port), timeout=10)
        f = raw.makefile("rb")
        self.assertTrue(f.readline().startswith(b"220"))
        raw.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        # The injection: commands in the same packet as STARTTLS (CVE-2011-0411 class).
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRSET\r\n")
        self.assertTrue(f.readline().startswith(b"220 2.0.0"))
        tls = client_context().wrap_socket(raw, server_hostname=HOST)
        tf = tls.makefile("rb")
        tls.sendall(b"NOOP\r\n")
        # The first reply over TLS answers our NOOP: nothing injected was answered.
        self.assertEqual(tf.readline(), b"250 2.0.0 Ok\r\n")
        tls.sendall(b"MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(tf.readline(), b"503 5.5.1 Error: send HELO/EHLO first\r\n")
        tls.close()

    def test_tls_below_1_2_is_refused(self):
        ctx = client_context(maximum=ssl.TLSVersion.TLSv1_1)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        try:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            with socket.create_connection(("127.0.0.1", self.implicit.port), timeout=10) as raw:
                with ctx.wrap_socket(raw) as tls:
                    tls.recv(100)
        # The listener is unharmed.
        with smtplib.SMTP_SSL("127.0.0.1", self.implicit.port, context=client_context()) as s:
            self.assertEqual(s.noop()[0], 250)

    def test_garbage_instead_of_a_handshake_closes_only_that_connection(self):
        for payload in (b"\x16\x03\x01\x00\x05hello", b"EHLO plain.text\r\n", b"\x00" * 4096):
            with socket.create_connection(("127.0.0.1", self.implicit.port), timeout=10) as raw:
                raw.sendall(payload)
                raw.settimeout(10)
                try:
                    while raw.recv(4096):
                        pass  # an alert at most, then EOF
                except ConnectionResetError:
                    pass
        # A client that connects and says nothing is dropped by the handshake timer; a
        # good client is served meanwhile.
        idle = socket.create_connection(("127.0.0.1", self.implicit.port), timeout=10)
        with smtplib.SMTP_SSL("127.0.0.1", self.implicit.port, context=client_context()) as s:
            self.assertEqual(s.noop()[0], 250)
        idle.close()
        with smtplib.SMTP("127.0.0.1", self.starttls.port) as s:
            s.ehlo()
            s.docmd("STARTTLS")
            s.sock.sendall(b"not a client hello\r\n" * 10)
            s.sock.settimeout(10)
            try:
                while s.sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        self.assertIsNone(self.starttls.proc.poll())
        self.assertIsNone(self.implicit.proc.poll())

    def test_certificate_is_reloaded_on_sighup(self):
        def serial(port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with client_context().wrap_socket(raw) as tls:
                    return tls.getpeercert(binary_form=True)
        before = serial(self.implicit.port)
        new_cert, new_key = make_cert(self.dir, "renewed")
        # Renewal in place, as certbot and friends do it; then SIGHUP.
        shutil.copy(new_cert, self.implicit_cert)
        shutil.copy(new_key, self.implicit_key)
        self.implicit.reload()
        deadline = time.time() + 10
        after = serial(self.implicit.port)
        while after == before and time.time() < deadline:
            time.sleep(0.1)
            after = serial(self.implicit.port)
        self.assertNotEqual(after, before)
        with open(new_cert) as f:
            self.assertEqual(ssl.DER_cert_to_PEM_cert(after).strip(), f.read().strip())


if __name__ == "__main__":
    harness.main()
