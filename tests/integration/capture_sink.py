#!/usr/bin/env python3
"""capture_sink: a real ESMTP server that records every message it accepts.

End-to-end tests point mtad's delivery at it (one or more instances on 127.0.0.x
loopback addresses stand in for a domain's MX hosts) and then read what arrived. Python
3.11 standard library only (asyncio, ssl); aiosmtpd is not needed.

Usage:
    capture_sink.py --listen 127.0.0.2:2525 [--listen 127.0.0.3:0 ...] --out msgs.jsonl
                    [--stats stats.json] [--eml-dir DIR] [--no-content] [--hostname mx.test]
                    [--max-size BYTES] [--max-connections N] [--timeout SECONDS]
                    [--tls-cert cert.pem --tls-key key.pem] [--script rules.json]
                    [--record-refusals]

For each listener it prints one JSON line to stdout once it listens, e.g.
    {"event": "listening", "address": "127.0.0.2", "port": 2525}
(port 0 picks a free port; read the real one from this line). Nothing else goes to
stdout; diagnostics go to stderr. SIGTERM or SIGINT stop it (exit status 0).

Protocol: EHLO/HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT, VRFY, HELP and, with
--tls-cert/--tls-key, STARTTLS. Extensions: PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
ENHANCEDSTATUSCODES, CHUNKING, DSN (and STARTTLS). Only CRLF.CRLF ends DATA; the
recorded content is un-dot-stuffed. Plain-text bytes pipelined after STARTTLS are
discarded (and counted) instead of being read as if they had come over TLS.

Records (--out, JSON lines, flushed before the 250 that acknowledges a message):
    {"type": "message", "id": "3.1", "conn_id": 3, "msg_index": 1,
     "timestamp": 1733306400.123, "time": "2024-12-04T10:00:00.123Z",
     "peer_ip": "127.0.0.1", "peer_port": 51234, "local_ip": "127.0.0.2",
     "local_port": 2525, "helo": "client.example", "esmtp": true,
     "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "bits": 256},
     "mail_from": "a@example.com", "mail_params": {"SIZE": "123", "BODY": "8BITMIME"},
     "rcpt_to": ["b@example.net"], "rcpt_params": [{"NOTIFY": "FAILURE"}],
     "transfer": "DATA", "size": 123, "sha256": "...", "data_b64": "..."}
    {"type": "connection", "conn_id": 3, ..., "messages": 1, "rejected": null,
     "starttls_discarded_bytes": 0, "start": ..., "end": ...}
With --record-refusals, every 4xx/5xx reply a script rule gives to a command (any rule
command but CONNECT) also gets a record, written before the reply is sent:
    {"type": "refusal", "conn_id": 3, "timestamp": ..., "command": "RCPT",
     "arg": "<b@example.net>", "reply": "452 4.2.2 Mailbox full"}
("reply" is the last line of the reply; DOT records have an empty "arg"). The sink's own
refusals (syntax errors, 503 out of sequence, size limits) are not recorded.
"tls" is null on plain-text connections. --eml-dir also writes each message's bytes
to DIR/<id>.eml. --no-content leaves "data_b64" out of message records (every other
field, "size" and "sha256" included, is still written): benchmarks that push 100,000+
messages through one sink keep the JSON lines small and the sink fast. --stats keeps a
JSON file up to date (written atomically):
    {"connections_total", "connections_rejected", "concurrent", "max_concurrent",
     "messages_total"}

Script (--script FILE or --script '{...}'), all keys optional, unknown keys are errors:
    {
      "hostname": "mx1.test",          # name in the greeting and EHLO reply
      "delay": 0.0,                    # seconds to wait before every reply
      "max_connections": 10,           # more concurrent connections get 421 at greeting
      "max_size": 1000000,             # SIZE limit (as --max-size)
      "disable_extensions": ["CHUNKING"],
      "rules": [                       # first matching rule with times left wins
        {"command": "RCPT", "match": "greylisted@", "reply": "450 4.2.0 Greylisted",
         "times": 2},                  # first 2 times (per recipient), then normal 250
        {"command": "RCPT", "match": "^<unknown", "reply": "550 5.1.1 No such user"},
        {"command": "CONNECT", "local": "127.0.0.3", "reply": "421 4.7.0 Busy"},
        {"command": "DOT", "match": "X-Spam: yes", "reply": "554 5.7.1 Spam"},
        {"command": "MAIL", "delay": 2.5},
        {"command": "DATA", "reply": ["451-4.3.0 Multi-line", "451 4.3.0 reply"]}
      ]
    }
Rule fields: "command" is EHLO, HELO, MAIL, RCPT, DATA (the DATA command itself), DOT
(end of message: final "." or BDAT LAST), STARTTLS, RSET, NOOP, QUIT, CONNECT (the
greeting) or "*". "match" is a case-insensitive regular expression searched in the
command's argument (RCPT: "<addr> params", CONNECT: the peer IP, DOT: the message
decoded as Latin-1). "local" restricts the rule to connections received on that local
IP. "times" limits how often the rule applies; "scope" says how that is counted:
"value" (default: separately for each distinct argument, e.g. per recipient address) or
"global". "reply" is one reply line or a list of lines (or lines joined with "\\n");
without it the normal reply is sent. "delay" replaces the global delay for that reply.
"close": true closes the connection after the reply (a 421 always does); "drop": true
closes it without replying. A 2xx reply to MAIL/RCPT accepts as usual; any other code
refuses. A CONNECT reply of 554 makes the session answer 503 to everything but QUIT.
"""

import argparse
import asyncio
import base64
import datetime
import hashlib
import json
import os
import re
import signal
import ssl
import sys
import time

COMMAND_LINE_MAX = 4096  # generous: DSN parameters make MAIL/RCPT lines long
DATA_LINE_MAX = 1 << 20  # not RFC 5321's 1000: a capture tool records what it gets
MAX_RECIPIENTS = 1000
RULE_COMMANDS = {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "DOT", "STARTTLS", "RSET", "NOOP",
                 "QUIT", "CONNECT", "*"}
RULE_KEYS = {"command", "match", "local", "reply", "times", "scope", "delay", "close",
             "drop"}
SCRIPT_KEYS = {"hostname", "delay", "max_connections", "max_size", "disable_extensions",
               "rules"}
EXTENSIONS = ["PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
              "CHUNKING", "DSN", "STARTTLS"]


def log(msg):
    print(f"capture_sink: {msg}", file=sys.stderr, flush=True)


class ScriptError(Exception):
    pass


class Rule:
    def __init__(self, index, spec):
        if not isinstance(spec, dict):
            raise ScriptError(f"rule {index}: must be an object")
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ScriptError(f"rule {index}: unknown keys {sorted(unknown)}")
        self.index = index
        self.command = str(spec.get("command", "")).upper()
        if self.command not in RULE_COMMANDS:
            raise ScriptError(f"rule {index}: command must be one of {sorted(RULE_COMMANDS)}")
        try:
            self.match = re.compile(spec["match"], re.IGNORECASE) if "match" in spec else None
        except re.error as e:
            raise ScriptError(f"rule {index}: bad match regex: {e}") from e
        self.local = spec.get("local")
        self.reply = None
        if "reply" in spec:
            reply = spec["reply"]
            lines = reply if isinstance(reply, list) else str(reply).split("\n")
            for line in lines:
                if not re.match(r"^[2-5][0-9][0-9]([ -]|$)", line):
                    raise ScriptError(f"rule {index}: bad reply line {line!r}")
            self.reply = list(lines)
        self.times = spec.get("times")
        if self.times is not None and (not isinstance(self.times, int) or self.times < 0):
            raise ScriptError(f"rule {index}: times must be a non-negative integer")
        self.scope = spec.get("scope", "value")
        if self.scope not in ("value", "global"):
            raise ScriptError(f"rule {index}: scope must be 'value' or 'global'")
        self.delay = spec.get("delay")
        self.close = bool(spec.get("close", False))
        self.drop = bool(spec.get("drop", False))
        self.counts = {}

    def applies(self, command, arg, local_ip):
        if self.command not in ("*", command):
            return False
        if self.local is not None and self.local != local_ip:
            return False
        if self.match is not None and not self.match.search(arg):
            return False
        if self.times is not None:
            key = "" if self.scope == "global" else arg.lower()
            used = self.counts.get(key, 0)
            if used >= self.times:
                return False
            self.counts[key] = used + 1
        return True


class Script:
    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ScriptError("script must be a JSON object")
        unknown = set(spec) - SCRIPT_KEYS
        if unknown:
            raise ScriptError(f"unknown script keys {sorted(unknown)}")
        self.hostname = spec.get("hostname")
        self.delay = float(spec.get("delay", 0))
        self.max_connections = spec.get("max_connections")
        self.max_size = spec.get("max_size")
        self.disabled = {e.upper() for e in spec.get("disable_extensions", [])}
        self.rules = [Rule(i, r) for i, r in enumerate(spec.get("rules", []))]

    def decide(self, command, arg, local_ip):
        for rule in self.rules:
            if rule.applies(command, arg, local_ip):
                return rule
        return None


class Sink:
    """Process-wide state: listeners, counters, the record files."""

    def __init__(self, args, script):
        self.hostname = script.hostname or args.hostname
        self.max_size = script.max_size if script.max_size is not None else args.max_size
        self.max_connections = (script.max_connections if script.max_connections is not None
                                else args.max_connections)
        self.timeout = args.timeout
        self.script = script
        self.extensions = [e for e in EXTENSIONS if e not in script.disabled]
        self.out = open(args.out, "a", encoding="utf-8")
        self.eml_dir = args.eml_dir
        self.no_content = args.no_content
        self.record_refusals = args.record_refusals
        if self.eml_dir:
            os.makedirs(self.eml_dir, exist_ok=True)
        self.stats_path = args.stats
        self.tls_context = None
        if args.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            self.tls_context = ctx
        self.next_conn_id = 1
        self.stats = {"connections_total": 0, "connections_rejected": 0, "concurrent": 0,
                      "max_concurrent": 0, "messages_total": 0}
        self.write_stats()

    def record(self, rec):
        self.out.write(json.dumps(rec, sort_keys=True) + "\n")
        self.out.flush()

    def write_stats(self):
        if not self.stats_path:
            return
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.stats, f, sort_keys=True)
        os.replace(tmp, self.stats_path)

    async def handle(self, reader, writer):
        conn_id = self.next_conn_id
        self.next_conn_id += 1
        self.stats["connections_total"] += 1
        admitted = self.max_connections is None or self.stats["concurrent"] < self.max_connections
        if admitted:
            self.stats["concurrent"] += 1
            self.stats["max_concurrent"] = max(self.stats["max_concurrent"],
                                               self.stats["concurrent"])
        else:
            self.stats["connections_rejected"] += 1
        self.write_stats()
        session = Session(self, conn_id, reader, writer)
        try:
            await session.run(admitted)
        finally:
            if admitted:
                self.stats["concurrent"] -= 1
            self.write_stats()


def now_fields():
    t = time.time()
    iso = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return t, iso


def split_path(arg):
    """'<a@b> PARAMS' -> ('a@b', 'PARAMS'); None if there is no <...> path."""
    arg = arg.lstrip(" ")
    if not arg.startswith("<"):
        return None
    in_quote = False
    i = 1
    while i < len(arg):
        c = arg[i]
        if in_quote and c == "\\":
            i += 2
            continue
        if c == '"':
            in_quote = not in_quote
        elif c == ">" and not in_quote:
            return arg[1:i], arg[i + 1:].strip(" ")
        i += 1
    return None


def parse_params(text):
    params = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", key):
            raise ValueError(f"bad parameter {item!r}")
        key = key.upper()
        if key in params:
            raise ValueError(f"duplicate parameter {key}")
        params[key] = value if "=" in item else None
    return params


class Closing(Exception):
    """The session ends (QUIT, 421, rule-driven close, unrecoverable framing)."""


class Session:
    def __init__(self, sink, conn_id, reader, writer):
        self.sink = sink
        self.conn_id = conn_id
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.peer_ip, self.peer_port = peer[0], peer[1]
        self.local_ip, self.local_port = local[0], local[1]
        self.buf = bytearray()
        self.start, _ = now_fields()
        self.tls = None
        self.helo = None
        self.esmtp = False
        self.refused = False  # greeted with 554: only QUIT is served
        self.msg_index = 0
        self.starttls_discarded = 0
        self.rejected = None
        self.reset()

    def reset(self):
        self.mail_from = None
        self.mail_params = {}
        self.rcpts = []
        self.rcpt_params = []
        self.bdat_data = None  # bytearray while a BDAT transfer is in progress
        self.bdat_failed = None  # reply for every chunk of a BDAT transfer that cannot succeed

    # ---- I/O --------------------------------------------------------------------------

    async def fill(self):
        try:
            data = await asyncio.wait_for(self.reader.read(65536), self.sink.timeout)
        except asyncio.TimeoutError:
            await self.send(["421 4.4.2 %s Error: timeout exceeded" % self.sink.hostname],
                            delay=0)
            raise Closing()
        if not data:
            raise Closing()
        self.buf += data

    async def read_line(self, limit):
        """One line including its LF; None if it was longer than `limit` (then skipped)."""
        too_long = False
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return None if too_long else line
            if len(self.buf) > limit:
                too_long = True
                self.buf.clear()
            await self.fill()

    async def read_exact(self, n):
        while len(self.buf) < n:
            await self.fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def send(self, lines, delay=None):
        delay = self.sink.script.delay if delay is None else delay
        if delay:
            await self.writer.drain()
            await asyncio.sleep(delay)
        for line in lines:
            self.writer.write(line.encode("utf-8", "surrogateescape") + b"\r\n")
        # Replies to a pipelined group leave together: flush once the input is used up.
        if not self.buf:
            await self.writer.drain()

    async def reply(self, command, arg, default, accept_codes=("2",)):
        """Sends the scripted or the default reply. Returns True if the command succeeded."""
        rule = self.sink.script.decide(command, arg, self.local_ip)
        if rule is not None and rule.drop:
            raise Closing()
        lines = rule.reply if rule is not None and rule.reply is not None else default
        self.record_refusal(command, arg, lines)
        await self.send(lines, delay=rule.delay if rule is not None else None)
        code = lines[-1][:3]
        if code == "421" or (rule is not None and rule.close):
            raise Closing()
        return code[0] in accept_codes

    def record_refusal(self, command, arg, lines):
        """With --record-refusals: a record for a 4xx/5xx reply (before it is sent)."""
        if self.sink.record_refusals and lines[-1][:1] in ("4", "5"):
            t, _ = now_fields()
            self.sink.record({"type": "refusal", "conn_id": self.conn_id, "timestamp": t,
                              "command": command, "arg": arg, "reply": lines[-1]})

    # ---- Session ----------------------------------------------------------------------

    async def run(self, admitted):
        try:
            if not admitted:
                self.rejected = "too many connections"
                await self.send(["421 4.7.0 %s Error: too many connections" % self.sink.hostname],
                                delay=0)
                return
            default = ["220 %s ESMTP capture_sink" % self.sink.hostname]
            rule = self.sink.script.decide("CONNECT", self.peer_ip, self.local_ip)
            if rule is not None and rule.drop:
                self.rejected = "dropped by script"
                return
            lines = rule.reply if rule is not None and rule.reply is not None else default
            await self.send(lines, delay=rule.delay if rule is not None else None)
            if not lines[-1].startswith("2"):
                self.rejected = lines[-1]
                if lines[-1].startswith("421"):
                    return
                self.refused = True
            while True:
                line = await self.read_line(COMMAND_LINE_MAX)
                if line is None:
                    await self.send(["500 5.5.2 Error: command line too long"])
                    continue
                if not line.endswith(b"\r\n"):
                    await self.send(["500 5.5.2 Error: bare <LF> received"])
                    continue
                await self.command(line[:-2].decode("utf-8", "surrogateescape"))
        except (Closing, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception as e:  # a bug here must not kill the whole sink
            log(f"connection {self.conn_id}: {type(e).__name__}: {e}")
        finally:
            end, _ = now_fields()
            self.sink.record({
                "type": "connection", "conn_id": self.conn_id, "peer_ip": self.peer_ip,
                "peer_port": self.peer_port, "local_ip": self.local_ip,
                "local_port": self.local_port, "start": self.start, "end": end,
                "tls": self.tls, "helo": self.helo, "messages": self.msg_index,
                "rejected": self.rejected, "starttls_discarded_bytes": self.starttls_discarded})
            try:
                self.writer.close()
                await self.writer.wait_closed()
            except (ConnectionError, ssl.SSLError, OSError):
                pass

    async def command(self, line):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if self.refused and verb != "QUIT":
            return await self.send(["503 5.5.1 Error: no SMTP service here"])
        handler = {
            "EHLO": self.do_ehlo, "HELO": self.do_helo, "MAIL": self.do_mail,
            "RCPT": self.do_rcpt, "DATA": self.do_data, "BDAT": self.do_bdat,
            "RSET": self.do_rset, "NOOP": self.do_noop, "QUIT": self.do_quit,
            "STARTTLS": self.do_starttls,
        }.get(verb)
        if handler is not None:
            return await handler(arg)
        if verb == "VRFY":
            return await self.send(["252 2.5.2 Cannot VRFY user"])
        if verb == "HELP":
            return await self.send(["214 2.0.0 capture_sink: see the module docstring"])
        await self.send(["500 5.5.2 Error: command not recognized"])

    def ehlo_lines(self, arg):
        lines = ["%s Hello %s [%s]" % (self.sink.hostname, arg, self.peer_ip)]
        for ext in self.sink.extensions:
            if ext == "SIZE":
                lines.append("SIZE %d" % self.sink.max_size)
            elif ext == "STARTTLS":
                if self.sink.tls_context is not None and self.tls is None:
                    lines.append("STARTTLS")
            else:
                lines.append(ext)
        return ["250-" + l for l in lines[:-1]] + ["250 " + lines[-1]]

    async def do_ehlo(self, arg):
        if not arg.strip():
            return await self.send(["501 5.5.4 Syntax: EHLO hostname"])
        if await self.reply("EHLO", arg, self.ehlo_lines(arg.strip())):
            self.reset()
            self.helo = arg.strip()
            self.esmtp = True

    async def do_helo(self, arg):
        if not arg.strip():
            return await self.send(["501 5.5.4 Syntax: HELO hostname"])
        if await self.reply("HELO", arg, ["250 %s" % self.sink.hostname]):
            self.reset()
            self.helo = arg.strip()
            self.esmtp = False

    async def do_mail(self, arg):
        if self.helo is None:
            return await self.send(["503 5.5.1 Error: send HELO/EHLO first"])
        if self.mail_from is not None:
            return await self.send(["503 5.5.1 Error: nested MAIL command"])
        if not arg[:5].upper() == "FROM:" or split_path(arg[5:]) is None:
            return await self.send(["501 5.5.4 Syntax: MAIL FROM:<address>"])
        address, rest = split_path(arg[5:])
        try:
            params = parse_params(rest)
        except ValueError as e:
            return await self.send(["501 5.5.4 Error: %s" % e])
        if params and not self.esmtp:
            return await self.send(["555 5.5.4 Error: parameters require EHLO"])
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    return await self.send(["501 5.5.4 Error: bad SIZE value"])
                if int(value) > self.sink.max_size:
                    return await self.send(["552 5.3.4 Message size exceeds fixed limit"])
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    return await self.send(["501 5.5.4 Error: unsupported BODY type"])
            elif key == "SMTPUTF8":
                if value is not None:
                    return await self.send(["501 5.5.4 Error: SMTPUTF8 takes no value"])
            elif key == "RET":
                if (value or "").upper() not in ("FULL", "HDRS"):
                    return await self.send(["501 5.5.4 Error: bad RET value"])
            elif key == "ENVID":
                if not value:
                    return await self.send(["501 5.5.4 Error: bad ENVID value"])
            else:
                return await self.send(["555 5.5.4 Error: unsupported parameter %s" % key])
        if any(ord(c) > 127 for c in address) and "SMTPUTF8" not in params:
            return await self.send(["553 5.6.7 Error: non-ASCII address requires SMTPUTF8"])
        if await self.reply("MAIL", arg[5:].lstrip(" "), ["250 2.1.0 Ok"]):
            self.mail_from = address
            self.mail_params = params

    async def do_rcpt(self, arg):
        if self.mail_from is None:
            return await self.send(["503 5.5.1 Error: need MAIL command"])
        if self.bdat_data is not None:
            return await self.send(["503 5.5.1 Error: RCPT during BDAT transfer"])
        if not arg[:3].upper() == "TO:" or split_path(arg[3:]) is None:
            return await self.send(["501 5.5.4 Syntax: RCPT TO:<address>"])
        address, rest = split_path(arg[3:])
        if not address:
            return await self.send(["501 5.1.3 Error: empty recipient"])
        try:
            params = parse_params(rest)
        except ValueError as e:
            return await self.send(["501 5.5.4 Error: %s" % e])
        if params and not self.esmtp:
            return await self.send(["555 5.5.4 Error: parameters require EHLO"])
        for key, value in params.items():
            if key == "NOTIFY":
                items = (value or "").upper().split(",")
                if not value or any(i not in ("NEVER", "SUCCESS", "FAILURE", "DELAY")
                                    for i in items) or ("NEVER" in items and len(items) > 1):
                    return await self.send(["501 5.5.4 Error: bad NOTIFY value"])
            elif key == "ORCPT":
                if not value or ";" not in value:
                    return await self.send(["501 5.5.4 Error: bad ORCPT value"])
            else:
                return await self.send(["555 5.5.4 Error: unsupported parameter %s" % key])
        if any(ord(c) > 127 for c in address) and "SMTPUTF8" not in self.mail_params:
            return await self.send(["553 5.6.7 Error: non-ASCII address requires SMTPUTF8"])
        if len(self.rcpts) >= MAX_RECIPIENTS:
            return await self.send(["452 4.5.3 Error: too many recipients"])
        if await self.reply("RCPT", arg[3:].lstrip(" "), ["250 2.1.5 Ok"]):
            self.rcpts.append(address)
            self.rcpt_params.append(params)

    async def do_data(self, arg):
        if arg:
            return await self.send(["501 5.5.4 Syntax: DATA"])
        if self.bdat_data is not None:
            return await self.send(["503 5.5.1 Error: DATA during BDAT transfer"])
        if self.mail_from is None:
            return await self.send(["503 5.5.1 Error: need MAIL command"])
        if not self.rcpts:
            return await self.send(["554 5.5.1 Error: no valid recipients"])
        if not await self.reply("DATA", "", ["354 End data with <CR><LF>.<CR><LF>"],
                                accept_codes=("3",)):
            return
        content = bytearray()
        too_big = False
        prev_crlf = True  # the 354 reply's CRLF: data starts at a line start
        while True:
            line = await self.read_line(DATA_LINE_MAX)
            if line is None:
                too_big = True  # an absurd line: keep reading to the real end, then refuse
                prev_crlf = False
                continue
            if prev_crlf and line == b".\r\n":
                break
            # Dot-stuffing applies at line starts, which only CRLF makes (RFC 5321 4.5.2).
            if prev_crlf and line.startswith(b"."):
                line = line[1:]
            prev_crlf = line.endswith(b"\r\n")
            if len(content) + len(line) > self.sink.max_size:
                too_big = True
            if not too_big:
                content += line
        if too_big:
            self.reset()
            return await self.send(["552 5.3.4 Message size exceeds fixed limit"])
        await self.finish_message(bytes(content), "DATA")

    async def do_bdat(self, arg):
        m = re.fullmatch(r"([0-9]{1,19})( +LAST)?", arg, re.IGNORECASE)
        if m is None:
            # Without a size the chunk cannot be skipped: the stream is lost.
            await self.send(["501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing connection"])
            raise Closing()
        size, last = int(m.group(1)), m.group(2) is not None
        if self.bdat_data is None:
            self.bdat_data = bytearray()
            if self.mail_from is None:
                self.bdat_failed = "503 5.5.1 Error: need MAIL command"
            elif not self.rcpts:
                self.bdat_failed = "554 5.5.1 Error: no valid recipients"
        # Read (and maybe discard) the chunk in pieces: it may be larger than we keep.
        remaining = size
        while remaining > 0:
            if not self.buf:
                await self.fill()
            take = min(remaining, len(self.buf))
            if self.bdat_failed is None and len(self.bdat_data) + take <= self.sink.max_size:
                self.bdat_data += self.buf[:take]
            elif self.bdat_failed is None:
                self.bdat_failed = "552 5.3.4 Message size exceeds fixed limit"
            del self.buf[:take]
            remaining -= take
        if self.bdat_failed is not None:
            failure = self.bdat_failed
            if last or failure.startswith("503"):
                self.reset()
            return await self.send([failure])
        if not last:
            return await self.send(["250 2.0.0 %d octets received" % len(self.bdat_data)])
        await self.finish_message(bytes(self.bdat_data), "BDAT")

    async def finish_message(self, content, transfer):
        text = content.decode("latin-1")
        rule = self.sink.script.decide("DOT", text, self.local_ip)
        if rule is not None and rule.drop:
            raise Closing()
        lines = rule.reply if rule is not None and rule.reply is not None else None
        delay = rule.delay if rule is not None else None
        close = rule is not None and rule.close
        accepted = lines is None or lines[-1].startswith("2")
        if not accepted:
            self.record_refusal("DOT", "", lines)
        if accepted:
            self.msg_index += 1
            msg_id = "%d.%d" % (self.conn_id, self.msg_index)
            t, iso = now_fields()
            rec = {
                "type": "message", "id": msg_id, "conn_id": self.conn_id,
                "msg_index": self.msg_index, "timestamp": t, "time": iso,
                "peer_ip": self.peer_ip, "peer_port": self.peer_port,
                "local_ip": self.local_ip, "local_port": self.local_port,
                "helo": self.helo, "esmtp": self.esmtp, "tls": self.tls,
                "mail_from": self.mail_from, "mail_params": self.mail_params,
                "rcpt_to": self.rcpts, "rcpt_params": self.rcpt_params,
                "transfer": transfer, "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
            if not self.sink.no_content:
                rec["data_b64"] = base64.b64encode(content).decode("ascii")
            if self.sink.eml_dir:
                with open(os.path.join(self.sink.eml_dir, msg_id + ".eml"), "wb") as f:
                    f.write(content)
            self.sink.record(rec)
            self.sink.stats["messages_total"] += 1
            self.sink.write_stats()
            if lines is None:
                lines = ["250 2.0.0 Ok: queued as %s" % msg_id]
        self.reset()
        await self.send(lines, delay=delay)
        if lines[-1].startswith("421") or close:
            raise Closing()

    async def do_rset(self, arg):
        self.reset()
        await self.reply("RSET", arg, ["250 2.0.0 Ok"])

    async def do_noop(self, arg):
        await self.reply("NOOP", arg, ["250 2.0.0 Ok"])

    async def do_quit(self, arg):
        await self.reply("QUIT", arg, ["221 2.0.0 Bye"])
        raise Closing()

    async def do_starttls(self, arg):
        if self.sink.tls_context is None or "STARTTLS" not in self.sink.extensions:
            return await self.send(["502 5.5.1 Error: command not implemented"])
        if self.tls is not None:
            return await self.send(["503 5.5.1 Error: TLS already active"])
        if arg:
            return await self.send(["501 5.5.4 Syntax: STARTTLS"])
        # Anything the client sent after STARTTLS arrived in plain text; reading it as if it
        # came over TLS is the classic STARTTLS command injection (CVE-2011-0411).
        pending = len(self.buf) + len(getattr(self.reader, "_buffer", b""))
        if pending:
            self.starttls_discarded += pending
            self.buf.clear()
            getattr(self.reader, "_buffer", bytearray()).clear()
        # Stop reading until TLS owns the socket: a fast client sends its ClientHello as soon
        # as it sees the 220, and the plain-text reader must not swallow it.
        self.writer.transport.pause_reading()
        if not await self.reply("STARTTLS", arg, ["220 2.0.0 Ready to start TLS"]):
            self.writer.transport.resume_reading()
            return
        await self.writer.start_tls(self.sink.tls_context)
        ssl_object = self.writer.get_extra_info("ssl_object")
        cipher = ssl_object.cipher() if ssl_object is not None else None
        self.tls = {"version": ssl_object.version() if ssl_object is not None else None,
                    "cipher": cipher[0] if cipher else None,
                    "bits": cipher[2] if cipher else None}
        # RFC 3207 section 4.2: the client starts over with EHLO.
        self.helo = None
        self.esmtp = False
        self.reset()


def parse_listen(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def load_script(value):
    if value is None:
        return Script({})
    try:
        if value.lstrip().startswith("{"):
            spec = json.loads(value)
        else:
            with open(value, encoding="utf-8") as f:
                spec = json.load(f)
    except (OSError, ValueError) as e:
        raise ScriptError(f"cannot load script: {e}") from e
    return Script(spec)


async def serve(args, script):
    sink = Sink(args, script)
    servers = []
    for host, port in args.listen:
        server = await asyncio.start_server(sink.handle, host, port, limit=DATA_LINE_MAX)
        servers.append(server)
        for sock in server.sockets:
            addr = sock.getsockname()
            print(json.dumps({"event": "listening", "address": addr[0], "port": addr[1]}),
                  flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()
    sink.write_stats()
    sink.out.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=parse_listen, action="append", required=True,
                   help="HOST:PORT to listen on (repeatable; port 0 = any free port)")
    p.add_argument("--out", required=True, help="JSON-lines file for message records")
    p.add_argument("--stats", help="JSON file kept up to date with connection counters")
    p.add_argument("--eml-dir", help="also write each message to DIR/<id>.eml")
    p.add_argument("--no-content", action="store_true",
                   help="leave data_b64 out of message records (size and sha256 stay)")
    p.add_argument("--hostname", default="capture-sink.test")
    p.add_argument("--max-size", type=int, default=50 * 1024 * 1024,
                   help="SIZE limit in bytes (default 50 MiB)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="concurrent connections beyond this get 421 at greeting")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="idle seconds before a session is closed with 421")
    p.add_argument("--tls-cert", help="PEM certificate chain: enables STARTTLS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--script", help="JSON rules (a file, or inline JSON starting with '{')")
    p.add_argument("--record-refusals", action="store_true",
                   help="also record every 4xx/5xx reply a script rule gives (type 'refusal')")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    try:
        script = load_script(args.script)
    except ScriptError as e:
        p.error(str(e))
    try:
        asyncio.run(serve(args, script))
    except OSError as e:
        log(f"cannot listen: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
