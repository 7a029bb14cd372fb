"""Fork modes: one fprocess per request, body on stdin, response from stdout.

``classic`` is fwatchdog (buffered; 500 ``exit status N`` + output; 408 on exec_timeout),
``serializing`` and ``streaming`` are of-watchdog's. Each request runs in its own connection
thread, so concurrent requests fork concurrent processes."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time

from .app import TEXT, Backend
from .config import Config
from .exchange import Exchange
from .http11 import Request, canonical_key
from .logs import log, raw
from .reaper import forget, spawn

_SIGNAL_TEXT: dict[int, str] = {
    signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted", signal.SIGINT: "interrupt", signal.SIGPIPE: "broken pipe", signal.SIGHUP: "hangup",
    signal.SIGQUIT: "quit", signal.SIGBUS: "bus error", signal.SIGFPE: "floating point exception",
    signal.SIGILL: "illegal instruction",
}
_BINARY_BYTES = frozenset([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


def exit_text(returncode: int) -> str:
    """Go's ``*exec.ExitError`` text: ``exit status 2`` or ``signal: killed``."""
    if returncode >= 0:
        return f"exit status {returncode}"
    return f"signal: {_SIGNAL_TEXT.get(-returncode, str(-returncode))}"


def sniff(data: bytes) -> str:
    """The common cases of Go's http.DetectContentType, used when nothing else names the type."""
    head = data[:512]
    s = head.lstrip(b"\t\n\x0c\r ").lower()
    if s.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<p", b"<div", b"<title")):
        return "text/html; charset=utf-8"
    if s.startswith(b"<?xml"):
        return "text/xml; charset=utf-8"
    for magic, ctype in ((b"%PDF-", "application/pdf"), (b"\x89PNG\r\n\x1a\n", "image/png"),
                         (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"), (b"\xff\xd8\xff", "image/jpeg"),
                         (b"\x1f\x8b\x08", "application/x-gzip"), (b"PK\x03\x04", "application/zip")):
        if head.startswith(magic):
            return ctype
    if any(b in _BINARY_BYTES for b in head):
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


def cgi_env(cfg: Config, req: Request) -> dict[str, str]:
    """The watchdog's env plus Http_* for the request, following the Go watchdogs' naming."""
    env = dict(os.environ)
    if not cfg.cgi_headers:
        return env
    classic = cfg.mode == "classic"
    seen: set[str] = set()
    for name, value in req.headers.items:
        lname = name.lower()
        # Go moves Host and Transfer-Encoding out of the header map; of-watchdog drops Content-Length
        if lname in ("host", "transfer-encoding") or (lname == "content-length" and not classic):
            continue
        key = "Http_" + canonical_key(name).replace("-", "_")
        if key not in seen:  # first value only
            seen.add(key)
            env[key] = value
    env["Http_Method"] = req.method
    env["Http_Path"] = req.path
    if req.query:
        env["Http_Query"] = req.query
    te = req.headers.get("Transfer-Encoding")
    if te:
        env["Http_Transfer_Encoding"] = te
    if classic:
        host = req.headers.get("Host")
        if host:
            env["Http_Host"] = host
        length = str(req.content_length if req.content_length is not None else 0)
        env["Http_ContentLength"] = length
        env["Http_Content_Length"] = length
    return env


class ForkBackend(Backend):
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def handle(self, ex: Exchange) -> None:
        if self.cfg.mode == "streaming":
            self._streaming(ex)
        else:
            self._buffered(ex)

    # --- classic / serializing -----------------------------------------------------------------

    def _buffered(self, ex: Exchange) -> None:
        cfg, req = self.cfg, ex.req
        classic = cfg.mode == "classic"
        ex.interim_continue()
        body = req.body.read_all()
        env = cgi_env(cfg, req)
        if classic:
            log("Forking fprocess.")
        start = time.monotonic()
        try:
            proc = spawn(cfg.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if cfg.combine_output else subprocess.PIPE, env=env)
        except OSError as exc:
            log(f"Failed to start process: {exc}")
            ex.send(500, [("Content-Type", TEXT)], f"Failed to start process: {exc}\n".encode())
            return
        try:
            out, err = proc.communicate(body, cfg.exec_timeout or None)
        except subprocess.TimeoutExpired:
            log(f"Killing process: {cfg.fprocess}")
            proc.kill()  # only the direct child, as fwatchdog does
            _, rest_err = _collect_rest(proc, ex)
            forget(proc)
            if classic:
                ex.send(408, [("Content-Type", TEXT)], b"Killed process.\n")
            else:
                self._log_stderr(rest_err)
                ex.send(500, [("Content-Type", TEXT), ("X-Duration-Seconds", _secs(start))], b"signal: killed")
                self._access_log(ex, start)
            return
        forget(proc)
        duration = _secs(start)
        err = err or b""
        out = out or b""
        if proc.returncode != 0:
            text = exit_text(proc.returncode)
            if classic:
                if err:
                    log(f"stderr: {err.decode('utf-8', 'replace')}")
                log(f"Success=false, Error={text}")
                ex.send(500, [("Content-Type", TEXT)], f"{text}\n".encode() + out)
            else:
                self._log_stderr(err)
                ex.send(500, [("Content-Type", TEXT), ("X-Duration-Seconds", duration)], text.encode())
                self._access_log(ex, start)
            return
        if classic:
            if err:
                log(f"stderr: {err.decode('utf-8', 'replace')}")
            ctype = cfg.content_type or req.headers.get("Content-Type") or sniff(out)
        else:
            self._log_stderr(err)
            ctype = cfg.content_type
        if cfg.write_debug:
            log(f"Success=true, Output={out.decode('utf-8', 'replace')}")
        ex.send(200, [("Content-Type", ctype), ("X-Duration-Seconds", duration)], out)
        if classic:
            log(f"Wrote {len(out)} Bytes - Duration: {duration}s")
        else:
            self._access_log(ex, start)

    # --- streaming -------------------------------------------------------------------------------

    def _streaming(self, ex: Exchange) -> None:
        cfg, req = self.cfg, ex.req
        ex.interim_continue()
        start = time.monotonic()
        try:
            proc = spawn(cfg.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=cgi_env(cfg, req), bufsize=0)
        except OSError as exc:
            log(f"Failed to start process: {exc}")
            ex.send(500, [("Content-Type", TEXT)], f"Failed to start process: {exc}\n".encode())
            return
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            with contextlib.suppress(OSError):
                proc.kill()

        timer = threading.Timer(cfg.exec_timeout, kill) if cfg.exec_timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        stderr_reader = open(proc.stderr.fileno(), "rb", closefd=False)  # noqa: SIM115 - closed by Popen
        stderr_pump = threading.Thread(target=pump_lines, args=(stderr_reader, "stderr", 2, cfg.prefix_logs),
                                       daemon=True)
        stderr_pump.start()
        feeder = threading.Thread(target=_feed, args=(req, proc.stdin), daemon=True)
        feeder.start()
        try:
            data = proc.stdout.read(65536)
            if not data:
                proc.wait()
                stderr_pump.join(1.0)
                if proc.returncode != 0 and not killed.is_set():
                    ex.send(500, [("Content-Type", TEXT)], exit_text(proc.returncode).encode())
                else:
                    ex.send(200, [("Content-Type", cfg.content_type)], b"")
            else:
                ex.start(200, [("Content-Type", cfg.content_type)])
                while data:
                    ex.write(data)
                    data = proc.stdout.read(65536)
                ex.finish()
            proc.wait()
            if proc.returncode != 0:
                log(exit_text(proc.returncode))
        except BaseException:
            kill()
            raise
        finally:
            if timer:
                timer.cancel()
            proc.stdout.close()
            feeder.join(1.0)
            if proc.returncode is None:
                proc.wait()
            forget(proc)
        self._access_log(ex, start)

    # --- logs --------------------------------------------------------------------------------------

    def _log_stderr(self, err: bytes | None) -> None:
        if err:
            for line in err.decode("utf-8", "replace").splitlines():
                emit_line("stderr", line, 2, self.cfg.prefix_logs)

    @staticmethod
    def _access_log(ex: Exchange, start: float) -> None:
        ua = ex.req.headers.get("User-Agent") or ""
        if ua.startswith("kube-probe"):
            return
        log(f"{ex.req.method} {ex.req.request_uri} - {ex.status} - ContentLength: {ex.bytes_out}B "
            f"({time.monotonic() - start:.4f}s)")


def _secs(start: float) -> str:
    return f"{time.monotonic() - start:f}"


def _collect_rest(proc: subprocess.Popen[bytes], ex: Exchange) -> tuple[bytes | None, bytes | None]:
    """After a kill, read what is left, but not forever: a grandchild may still hold stdout."""
    wait = max(0.5, ex.deadline - time.monotonic()) if ex.deadline else 5.0
    try:
        return proc.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        return b"", None


def _feed(req: Request, stdin: io.RawIOBase) -> None:
    """Streams the request body into the child's stdin, then closes it (EOF for the function)."""
    write = stdin.write
    try:
        while True:
            data = req.body.read()
            if not data:
                break
            write(data)
    except (OSError, ValueError):
        pass  # the function closed stdin early or the client went away
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def emit_line(stream: str, line: str, fd: int, prefix: bool) -> None:
    if prefix:
        log(f"{stream}: {line}", fd)
    else:
        raw(line, fd)


def pump_lines(pipe: io.BufferedIOBase | io.RawIOBase, stream: str, fd: int, prefix: bool) -> None:
    """Copies a child's output line by line into our log, as of-watchdog does."""
    try:
        for line in iter(pipe.readline, b""):
            emit_line(stream, line.decode("utf-8", "replace").rstrip("\n"), fd, prefix)
    except (OSError, ValueError):
        pass
