"""A real authoritative DNS server (Debian's nsd) on 127.0.0.1 serving test zones."""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

NSD = "/usr/sbin/nsd"


def _free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (fresh sockets for every try)."""
    for _ in range(50):
        port = random.randint(20000, 60000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            try:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def _soa_query(name):
    qid = random.randint(0, 65535)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return qid, q + b"\x00" + struct.pack(">HH", 6, 1)


class NsdServer:
    """zones: {"example.test": "zone file text without $ORIGIN"}."""

    def __init__(self, zones):
        self.zones = zones
        self.dir = tempfile.mkdtemp(prefix="nsd-")
        os.chmod(self.dir, 0o755)
        self.port = None
        self.proc = None

    def start(self, timeout=20):
        if not os.path.exists(NSD):
            raise RuntimeError("nsd not installed (Debian package nsd)")
        self.port = _free_port()
        conf = [
            "server:", "  ip-address: 127.0.0.1", f"  port: {self.port}", "  do-ip6: no",
            '  username: ""', '  chroot: ""', f'  zonesdir: "{self.dir}"',
            f'  pidfile: "{self.dir}/nsd.pid"', '  database: ""',
            f'  xfrdfile: "{self.dir}/xfrd.state"', f'  zonelistfile: "{self.dir}/zone.list"',
            f'  xfrdir: "{self.dir}"', f'  logfile: "{self.dir}/nsd.log"', "  server-count: 1",
            "  verbosity: 1", "remote-control:", "  control-enable: no",
        ]
        for name, text in self.zones.items():
            with open(os.path.join(self.dir, name + ".zone"), "w") as f:
                f.write(f"$ORIGIN {name}.\n$TTL 300\n")
                f.write(f"@ IN SOA ns.{name}. hostmaster.{name}. 1 3600 600 86400 60\n")
                f.write(f"@ IN NS ns.{name}.\nns IN A 127.0.0.1\n")
                f.write(text)
            conf += ["zone:", f"  name: {name}", f"  zonefile: {name}.zone"]
        with open(os.path.join(self.dir, "nsd.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
        out = open(os.path.join(self.dir, "nsd.out"), "w")
        self.proc = subprocess.Popen([NSD, "-d", "-c", os.path.join(self.dir, "nsd.conf")],
                                     stdout=out, stderr=out, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nsd exited: " + self.logs())
            if all(self._answers_soa(name) for name in self.zones):
                return self
            time.sleep(0.05)
        raise RuntimeError("nsd did not answer: " + self.logs())

    def _answers_soa(self, name):
        # A fresh socket per probe, and replies to other queries skipped: a late answer to
        # an earlier probe must not be taken for this one's.
        qid, q = _soa_query(name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            try:
                s.sendto(q, ("127.0.0.1", self.port))
                while True:
                    data, _ = s.recvfrom(4096)
                    if len(data) >= 4 and struct.unpack(">H", data[:2])[0] == qid:
                        return data[3] & 0x0F == 0
            except OSError:
                return False

    def address(self):
        return f"127.0.0.1:{self.port}"

    def logs(self):
        text = ""
        for name in ("nsd.out", "nsd.log"):
            try:
                with open(os.path.join(self.dir, name)) as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def stop(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
