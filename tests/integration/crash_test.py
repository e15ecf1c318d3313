"""kill -9 durability test: every message that got 250 must be in the spool, intact.

Concurrent clients inject messages while mtad is killed with SIGKILL at a random moment,
over many rounds on the same spool. After each round the spool is dumped and checked:
  * every message acknowledged with 250 is present under the queue id from the reply,
    with byte-identical content (apart from the Received: header mtad prepends);
  * every spooled message is one a client actually sent (no corruption, no invention),
    and none of them had been refused with an error reply;
  * messages sent but unanswered when mtad died may or may not be present (at-least-once).
"""

import hashlib
import os
import random
import socket
import threading
import time
import unittest

import harness
from harness import Mtad, RawSmtp, strip_received

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "12"))
CLIENTS = 12


class Client(threading.Thread):

    def __init__(self, port, tag, ledger, stop):
        super().__init__(daemon=True)
        self.port, self.tag, self.ledger, self.stop = port, tag, ledger, stop

    def run(self):
        n = 0
        while not self.stop.is_set():
            c = None
            try:
                c = RawSmtp(self.port, timeout=5)
                if c.greeting[0] != 220:
                    c.close()
                    time.sleep(0.01)
                    continue
                c.cmd("EHLO crash.example")
                for _ in range(random.randint(1, 5)):
                    n += 1
                    headers = (f"From: c@example.com\r\nTo: r@example.net\r\n"
                               f"Message-ID: <{self.tag}-{n}@example.com>\r\n"
                               f"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
                               f"Subject: {self.tag} {n}\r\n\r\n").encode()
                    text = os.urandom(random.randint(10, 3000)).hex().encode()
                    body = headers + b"\r\n".join(
                        text[i:i + 76] for i in range(0, len(text), 76)) + b"\r\n"
                    digest = hashlib.sha256(body).hexdigest()
                    c.send(b"MAIL FROM:<c@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
                    codes = [c.reply()[0] for _ in range(3)]
                    if codes != [250, 250, 354]:
                        raise OSError(f"unexpected {codes}")
                    with self.ledger["lock"]:
                        self.ledger["sent"][digest] = body
                    c.send(body + b".\r\n")
                    code, text = c.reply()
                    with self.ledger["lock"]:
                        if code == 250:
                            self.ledger["acked"][text.split()[-1]] = digest
                        else:
                            self.ledger["refused"].add(digest)
                c.cmd("QUIT")
                c.close()
            except (OSError, EOFError):
                if c is not None:
                    c.close()
                time.sleep(0.005)  # mtad is down or restarting


class CrashTest(unittest.TestCase):

    def test_kill9_never_loses_an_acknowledged_message(self):
        m = Mtad(shards=2)
        ledger = {"lock": threading.Lock(), "sent": {}, "acked": {}, "refused": set()}
        total_acked = 0
        for round_no in range(ROUNDS):
            m.start()
            stop = threading.Event()
            clients = [Client(m.port, f"r{round_no}c{i}", ledger, stop) for i in range(CLIENTS)]
            for c in clients:
                c.start()
            time.sleep(random.uniform(0.3, 1.2))
            m.kill9()
            stop.set()
            for c in clients:
                c.join(timeout=10)
            records = m.dump()
            spooled = {}
            for r in records:
                spooled[r["id"]] = hashlib.sha256(strip_received(r["content"])).hexdigest()
            with ledger["lock"]:
                for qid, digest in ledger["acked"].items():
                    self.assertIn(qid, spooled, f"round {round_no}: acknowledged {qid} lost")
                    self.assertEqual(spooled[qid], digest, f"round {round_no}: {qid} corrupted")
                for qid, digest in spooled.items():
                    self.assertIn(digest, ledger["sent"], f"{qid} was never sent by a client")
                    self.assertNotIn(digest, ledger["refused"], f"{qid} was refused yet spooled")
                total_acked = len(ledger["acked"])
            print(f"round {round_no}: {total_acked} acknowledged so far, {len(spooled)} spooled",
                  flush=True)
        self.assertGreater(total_acked, ROUNDS * 10, "too little traffic to prove anything")
        # A final clean start recovers exactly what the spool holds.
        m.start()
        m.stop()
        self.assertIn(f"recovered {len(spooled)} messages", m.log())


if __name__ == "__main__":
    harness.main()
