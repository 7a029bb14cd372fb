"""faasd-py python3-http template: the long-running upstream behind the watchdog's http mode.

Every request becomes an ``event`` (body, headers, method, query, path) and ``function.handler.
handle(event, context)`` answers with a dict ``{"statusCode", "body", "headers"}`` or a plain
string. Only the standard library: the image needs nothing but an interpreter.
"""

import json
import os
import site
import socket
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = os.path.join(HERE, "python")
MAX_CHUNK_LINE = 4096


class Event:
    """What the handler sees of a request. ``headers`` is case-insensitive; ``query`` maps each
    name to its first value (all values are in ``query_list``)."""

    def __init__(self, body, headers, method, path, query_string):
        self.body = body
        self.headers = headers
        self.method = method
        self.path = path
        self.query_list = parse_qs(query_string, keep_blank_values=True)
        self.query = {k: v[0] for k, v in self.query_list.items()}


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def _encode(body, headers):
    """bytes as they are, str as UTF-8, anything else (dict, list, number) as JSON."""
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    return json.dumps(body).encode("utf-8")


def _response(ret):
    if isinstance(ret, dict):
        status = int(ret.get("statusCode") or 200)
        headers = {str(k): str(v) for k, v in (ret.get("headers") or {}).items()}
        return status, headers, _encode(ret.get("body"), headers)
    headers = {}
    return 200, headers, _encode(ret, headers)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    function = None  # the imported handler module
    context = None

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(MAX_CHUNK_LINE).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(MAX_CHUNK_LINE) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(MAX_CHUNK_LINE)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self):
        url = urlsplit(self.path)
        event = Event(self._read_body(), self.headers, self.command, url.path, url.query)
        try:
            status, headers, body = _response(self.function.handle(event, self.context))
        except Exception:
            traceback.print_exc()
            status, headers, body = 500, {"Content-Type": "text/plain"}, b"Internal Server Error\n"
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format, *args):
        pass  # the watchdog logs every request already


def upstream_port():
    """The port of the watchdog's upstream_url (inherited from the image env), 5000 if unset."""
    url = os.environ.get("upstream_url") or "http://127.0.0.1:5000"  # noqa: SIM112 - the watchdog's name
    netloc = urlsplit(url).netloc
    host, _, port = netloc.rpartition(":")
    return int(port) if host and port.isdigit() else 5000


def main():
    if os.path.isdir(PACKAGES):
        site.addsitedir(PACKAGES)  # requirements.txt, installed at build time (.pth files honoured)
    from function import handler

    Handler.function = handler
    Handler.context = Context()
    server = ThreadingHTTPServer(("127.0.0.1", upstream_port()), Handler)
    server.daemon_threads = True
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sys.stderr.write(f"python3-http: listening on 127.0.0.1:{server.server_address[1]}\n")
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
