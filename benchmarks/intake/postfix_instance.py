"""A private Postfix instance (own config and queue directories) on a loopback port.

Used as the benchmark baseline. Intake only: every message is put on hold by the SMTP
server (check_client_access static:HOLD), so the queue manager never delivers; the
message is still written and fsynced by Postfix's cleanup before the 250 reply.
"""

import os
import shutil
import subprocess
import time

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localdomain
mydestination =
relayhost =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_restrictions = check_client_access static:HOLD
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 300
message_size_limit = 52428800
maillog_file = {workdir}/maillog
maillog_file_prefixes = {workdir}
smtpd_banner = $myhostname ESMTP
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:

    def __init__(self, workdir, port):
        self.workdir = os.path.abspath(workdir)
        self.port = port
        self.conf = os.path.join(self.workdir, "conf")
        self.queue = os.path.join(self.workdir, "queue")
        self.data = os.path.join(self.workdir, "data")

    def _postfix(self, *args):
        return subprocess.run(["postfix", "-c", self.conf, *args], capture_output=True,
                              text=True, timeout=60)

    def start(self):
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # the postfix user must reach its data directory
        shutil.chown(self.data, "postfix")
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(queue=self.queue, data=self.data, workdir=self.workdir))
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        # postfix-files drives "postfix set-permissions"/"check" for the private queue.
        for name in ("postfix-files", "dynamicmaps.cf"):
            src = os.path.join("/etc/postfix", name)
            if os.path.exists(src):
                shutil.copy(src, self.conf)
        for name in ("postfix-files.d", "dynamicmaps.cf.d"):
            src = os.path.join("/etc/postfix", name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.conf, name), dirs_exist_ok=True)
        # Postfix only prints its errors to a terminal; its own log file says why.
        out = self._postfix("start")
        if out.returncode != 0:
            raise RuntimeError(f"postfix start failed: {out.stdout}{out.stderr}")
        deadline = time.time() + 20
        import socket
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("postfix did not start listening")

    def held_messages(self):
        n = 0
        for _, _, files in os.walk(os.path.join(self.queue, "hold")):
            n += len(files)
        return n

    def clear_queue(self):
        subprocess.run(["postsuper", "-c", self.conf, "-d", "ALL"], capture_output=True,
                       timeout=120)

    def stop(self):
        self._postfix("stop")
        time.sleep(0.5)
