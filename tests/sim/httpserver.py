"""HTTP/1.1 plumbing shared by every simulated HTTP service (ARM, login, IMDS).

Keep-alive is real: protocol_version is HTTP/1.1 and every response carries a
Content-Length, so a client can reuse one connection for many requests. The
server counts connections per service (lazily: a connection counts once it has
carried one non-control request, so the harness talking to /_sim/ does not
disturb a connection-reuse benchmark). Responses are serialised by hand so
header order and a mid-response connection reset are under our control.
"""
import email.utils
import json
import logging
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("estate.http")

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
CONTROL_PREFIX = "/_sim/"
MAX_BODY = 8 * 1024 * 1024


class Stats:
    """Connections and requests per service, for GET /_sim/stats."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self.by_service = {}

    def _bump(self, service, field):
        with self._lock:
            entry = self.by_service.setdefault(service, {"connections": 0, "requests": 0})
            entry[field] += 1

    def connection(self, service):
        self._bump(service, "connections")

    def request(self, service):
        self._bump(service, "requests")

    def snapshot(self):
        with self._lock:
            arm = self.by_service.get("arm", {"connections": 0, "requests": 0})
            return {"connections": arm["connections"], "requests": arm["requests"],
                    "by_service": {k: dict(v) for k, v in self.by_service.items()}}


class Request:
    def __init__(self, service, method, target, headers, body, client):
        self.service, self.method, self.target = service, method, target
        self.headers, self.body, self.client = headers, body, client
        split = urllib.parse.urlsplit(target)
        self.path = urllib.parse.unquote(split.path)
        self.raw_query = split.query
        # ARM takes the first occurrence of a query parameter.
        self.query = {}
        for k, v in urllib.parse.parse_qsl(split.query, keep_blank_values=True):
            self.query.setdefault(k, v)
        self.line = f"{method} {target}"
        self.is_control = self.path.startswith(CONTROL_PREFIX)

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        """Decoded body (None if empty); raises ValueError with the parser's words."""
        if not self.body.strip():
            return None
        return json.loads(self.body.decode("utf-8"))


class Response:
    def __init__(self, status, body=b"", headers=None, content_type=None):
        self.status, self.body = status, body
        self.headers = list(headers or [])
        if content_type and body:
            self.headers.insert(0, ("Content-Type", content_type))
        self.server_name = None     # value of the Server header, if any
        self.reset_midway = False   # fault: cut the connection half-way through

    @classmethod
    def json(cls, status, obj, headers=None):
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, body, headers, "application/json; charset=utf-8")

    @classmethod
    def empty(cls, status, headers=None):
        return cls(status, b"", headers)

    def add(self, name, value):
        self.headers.append((name, str(value)))
        return self


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service, app, stats, ssl_context=None, port=0):
        self.service, self.app, self.stats, self.ssl_context = service, app, stats, ssl_context
        super().__init__(("127.0.0.1", port), SimHandler)

    @property
    def port(self):
        return self.server_address[1]

    def handle_error(self, request, client_address):
        # A client that hangs up or fails the TLS handshake is normal here.
        log.debug("%s: connection from %s ended with an error", self.service, client_address,
                  exc_info=True)

    def serve_in_thread(self):
        # A short poll interval keeps `estate stop` quick (shutdown waits for the loop to notice).
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"serve-{self.service}", daemon=True)
        thread.start()
        return thread


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections are closed after this

    def setup(self):
        if self.server.ssl_context is not None:
            self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        self._counted = False
        super().setup()

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass  # the socket may already be reset on purpose

    def log_message(self, fmt, *args):
        log.debug("%s: " + fmt, self.server.service, *args)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self):
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _dispatch(self):
        started = time.monotonic()
        body = self._read_body()
        req = Request(self.server.service, self.command, self.path, self.headers, body,
                      self.client_address)
        if not req.is_control:
            self.server.stats.request(self.server.service)
            if not self._counted:
                self.server.stats.connection(self.server.service)
                self._counted = True
        try:
            resp = self.server.app.handle(req)
        except Exception:
            log.exception("%s: unhandled error for %s", self.server.service, req.line)
            resp = Response.json(500, {"error": {"code": "InternalServerError",
                                                 "message": "The simulator failed; see estate.log."}})
        self._write(req, resp)
        log.info("%s %s %s -> %d (%.0f ms)", self.server.service, req.method,
                 req.target.split("?")[0], resp.status, (time.monotonic() - started) * 1000)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _serialise(self, req, resp):
        """-> (head bytes, body bytes)."""
        lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}"]
        headers = list(resp.headers)
        if resp.server_name:
            headers.append(("Server", resp.server_name))
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        headers.append(("Content-Length", str(len(resp.body))))
        if self.close_connection:
            headers.append(("Connection", "close"))
        lines += [f"{k}: {v}" for k, v in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head, (b"" if req.method == "HEAD" else resp.body)

    def _write(self, req, resp):
        head, body = self._serialise(req, resp)
        if not resp.reset_midway:
            self.wfile.write(head + body)
            return
        # Cut inside the body, so Content-Length proves the response incomplete (a cut inside
        # the headers reads as a clean end to some clients); without a body, cut the last CRLF.
        self.wfile.write(head + body[:len(body) // 2] if body else head[:-2])
        # Let the client read the first half before the RST: an RST that overtakes unread
        # data makes the kernel drop that data, and the fault would look like a refused request.
        time.sleep(0.05)
        self._reset_connection()

    def _reset_connection(self):
        """Send a TCP RST instead of a clean close (SO_LINGER with zero timeout)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw = self.connection
            if isinstance(raw, ssl.SSLSocket):
                raw = socket.socket(fileno=raw.detach())  # skip the TLS close_notify
            raw.close()
        except OSError:
            pass
