#!/usr/bin/env python3
"""A webhook endpoint for webhook_test: Python's http.server, recording every POST.

Prints its port on stdout once it listens. Each request becomes one JSON line in --record:
{"n": 0, "status": 200, "path": "/x", "headers": {...lower-case names...}, "valid": true,
 "events": [...]}, written before the answer is sent. The first requests are answered with
the codes in --statuses, the rest with 200. --cert/--key serve https.
"""
import argparse
import http.server
import json
import ssl
import threading


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--statuses", default="")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    statuses = [int(s) for s in args.statuses.split(",") if s]
    lock = threading.Lock()
    count = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            try:
                events = json.loads(body)
                valid = isinstance(events, list)
            except ValueError:
                events, valid = None, False
            with lock:
                n = count[0]
                count[0] += 1
                status = statuses[n] if n < len(statuses) else 200
                record = {
                    "n": n,
                    "status": status,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "valid": valid,
                    "events": events,
                }
                with open(args.record, "a") as f:
                    f.write(json.dumps(record) + "\n")
            payload = b"ok\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True

        def log_message(self, *unused):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
