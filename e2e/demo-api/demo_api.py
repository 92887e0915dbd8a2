#!/usr/bin/env python3
"""A small, deliberately naive HTTP API for Palisade's demo and end-to-end tests.

Endpoints: GET /healthz, GET /users/<id>, POST /login, GET /search?q=..., GET /files/<name>.
It is naive on purpose (it echoes input, it has a file endpoint) so that attacks against it are
realistic; it never reads outside its own files table.
Usage: demo_api.py PORT [CERT KEY]   (with CERT and KEY it serves HTTPS, through OpenSSL)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USERS = {str(i): {"id": i, "name": f"user{i}", "email": f"user{i}@example.com"} for i in range(1, 51)}
FILES = {"readme.txt": "Palisade demo API\n", "terms.txt": "Be nice.\n"}


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
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
