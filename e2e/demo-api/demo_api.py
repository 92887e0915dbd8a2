#!/usr/bin/env python3
"""A small, deliberately naive HTTP API for Palisade's demo and end-to-end tests.

Endpoints: GET /healthz, GET /users/<id>, GET /users/<id>/card, POST /login, GET /search?q=...,
GET /files/<name>; and the kind every real API has somewhere: an old version still served
(GET /v1/users/<id>), an export nobody documented (GET /export/users), and a debug route that
shows stack traces (GET /debug/crash).
It is naive on purpose (no access checks on objects, it echoes input, it leaks card numbers) so
that attacks against it are realistic; it never reads outside its own tables. The card numbers
are test numbers from card networks' documentation.
Usage: demo_api.py PORT [CERT KEY]   (with CERT and KEY it serves HTTPS, through OpenSSL)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USERS = {str(i): {"id": i, "name": f"user{i}", "email": f"user{i}@example.com"} for i in range(1, 51)}
FILES = {"readme.txt": "Palisade demo API\n", "terms.txt": "Be nice.\n"}
TEST_CARDS = ["4111 1111 1111 1111", "5500 0000 0000 0004", "3400 0000 0000 009"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-api/1.0"

    def log_message(self, fmt, *args):  # quiet; the agent is the observer
        pass

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        if url.path == "/healthz":
            return self.send_json(200, {"ok": True})
        if len(parts) == 2 and parts[0] == "users":
            user = USERS.get(parts[1])
            return self.send_json(200, user) if user else self.send_json(404, {"error": "no such user"})
        if len(parts) == 3 and parts[0] == "users" and parts[2] == "card":
            user = USERS.get(parts[1])
            if not user:
                return self.send_json(404, {"error": "no such user"})
            return self.send_json(200, {"id": user["id"], "card": TEST_CARDS[user["id"] % len(TEST_CARDS)]})
        if len(parts) == 3 and parts[:2] == ["v1", "users"]:
            user = USERS.get(parts[2])
            return self.send_json(200, user) if user else self.send_json(404, {"error": "no such user"})
        if url.path == "/export/users":
            return self.send_json(200, list(USERS.values()))
        if url.path == "/debug/crash":
            import traceback

            try:
                {}["missing"]
            except KeyError:
                text = traceback.format_exc().encode()
            self.send_response(500)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        if url.path == "/search":
            q = parse_qs(url.query).get("q", [""])[0]
            hits = [u for u in USERS.values() if q and q in u["name"]]
            return self.send_json(200, {"query": q, "hits": hits[:10]})
        if len(parts) >= 2 and parts[0] == "files":
            name = "/".join(parts[1:])
            if name in FILES:
                return self.send_json(200, {"name": name, "content": FILES[name]})
            return self.send_json(404, {"error": "no such file"})
        return self.send_json(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 65536))
        if self.path == "/login":
            try:
                creds = json.loads(body or b"{}")
            except ValueError:
                return self.send_json(400, {"error": "bad json"})
            if creds.get("user") == "alice" and creds.get("password") == "wonderland":
                return self.send_json(200, {"token": "demo-token"})
            return self.send_json(401, {"error": "bad credentials"})
        return self.send_json(404, {"error": "not found"})


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    if len(sys.argv) > 3:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        # "lazy": no SSL_do_handshake; OpenSSL handshakes inside the first SSL_read.
        lazy = len(sys.argv) > 4 and sys.argv[4] == "lazy"
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=not lazy
        )
    server.serve_forever()
