"""A TCP proxy for fault tests: it forwards, blackholes, resets, or drops STOMP receipts.

Toxiproxy's server is a Go binary this project does not install; this stands in for
it on loopback. ``FaultProxy(port)`` listens on ``127.0.0.1:<ephemeral>`` and forwards
every connection to ``127.0.0.1:port``. While running it can:

- :meth:`~FaultProxy.blackhole`: stop forwarding in both directions *without closing*
  anything (a peer that vanished, a half-open connection): nothing is read, so the
  senders' socket buffers fill as they would behind a dead link;
- :meth:`~FaultProxy.reset`: close every proxied connection at once;
- :meth:`~FaultProxy.drop_receipts`: drop the RECEIPT frames (broker to client) whose
  ``receipt-id`` starts with a prefix (the connector asks for ``s-...`` receipts on
  SUBSCRIBE), a broker too busy to confirm subscriptions;
- :meth:`~FaultProxy.heal`: back to plain forwarding.

Only loopback: it binds 127.0.0.1 and connects to 127.0.0.1. Stop it with :meth:`close`.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["FaultProxy"]


class _StompSplitter:
    """Splits a broker-to-client byte stream into heart-beats and whole frames."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while self.buf:
            if self.buf[:1] == b"\n":
                out.append(b"\n")
                self.buf = self.buf[1:]
                continue
            if self.buf[:2] == b"\r\n":
                out.append(b"\r\n")
                self.buf = self.buf[2:]
                continue
            head_end = self.buf.find(b"\n\n")
            if head_end < 0:
                break
            length = None
            for line in self.buf[:head_end].split(b"\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    try:
                        length = int(line.split(b":", 1)[1].strip())
                    except ValueError:
                        length = None
            start = head_end + 2
            if length is not None:
                end = start + length
                if len(self.buf) < end + 1:
                    break
            else:
                end = self.buf.find(b"\0", start)
                if end < 0:
                    break
            out.append(self.buf[:end + 1])
            self.buf = self.buf[end + 1:]
        return out


def _receipt_id(frame: bytes) -> str | None:
    if not frame.startswith(b"RECEIPT\n"):
        return None
    for line in frame.split(b"\n\n", 1)[0].split(b"\n")[1:]:
        if line.startswith(b"receipt-id:"):
            return line.split(b":", 1)[1].strip().decode("utf-8", "replace")
    return None


class FaultProxy:
    """See the module docstring. ``port`` is the broker's (loopback) port."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("FaultProxy forwards to loopback only")
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._drop_prefix: str | None = None
        #: RECEIPT frames dropped so far
        self.dropped_receipts = 0
        #: connections accepted so far
        self.accepted = 0
        threading.Thread(target=self._accept, name=f"faultproxy-{self.port}", daemon=True).start()

    # -- modes -------------------------------------------------------------------------------
    def blackhole(self) -> None:
        """Stop forwarding both ways; connections stay open."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward everything again (and stop dropping receipts)."""
        self._drop_prefix = None
        self._flowing.set()

    def drop_receipts(self, prefix: str = "s-") -> None:
        """Drop broker RECEIPT frames whose receipt-id starts with ``prefix``."""
        self._drop_prefix = prefix

    def reset(self) -> None:
        """Close every proxied connection now."""
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b in conns:
            for sock in (a, b):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self.reset()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- forwarding ---------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError as exc:
                log.debug("faultproxy: upstream %s unreachable: %s", self.target, exc)
                client.close()
                continue
            with self._lock:
                self._conns.append((client, upstream))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_broker: bool) -> None:
        splitter = _StompSplitter() if from_broker else None
        try:
            while not self._closed.is_set():
                self._flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # a blackhole holds what was read, too
                if splitter is None:
                    dst.sendall(data)
                    continue
                for frame in splitter.feed(data):
                    prefix = self._drop_prefix
                    rid = _receipt_id(frame) if prefix is not None else None
                    if rid is not None and prefix is not None and rid.startswith(prefix):
                        self.dropped_receipts += 1
                        continue
                    dst.sendall(frame)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
