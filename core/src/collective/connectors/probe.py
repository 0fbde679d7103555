"""One raw STOMP CONNECT: does a broker accept this login? (for the fleet and the test
brokers, which need the answer without a connector's reconnect machinery)."""

from __future__ import annotations

import socket
import time


def stomp_login(port: int, user: str, password: str, host: str = "127.0.0.1",
                timeout: float = 2.0) -> str | None:
    """Send a STOMP 1.2 CONNECT to ``host:port``; ``None`` on CONNECTED (then
    DISCONNECT), else why not: the broker's ERROR text, or the socket error."""
    frame = (f"CONNECT\naccept-version:1.2\nhost:{host}\nlogin:{user}\npasscode:{password}\n"
             "heart-beat:0,0\n\n\x00").encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(frame)
            data = b""
            deadline = time.monotonic() + timeout
            while b"\x00" not in data and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data.lstrip(b"\r\n").startswith(b"CONNECTED"):
                try:
                    sock.sendall(b"DISCONNECT\n\n\x00")
                except OSError:
                    pass
                return None
            first = data.lstrip(b"\r\n").split(b"\x00", 1)[0].decode("utf-8", "replace")
            return " ".join(first.split())[:300] or "connection closed without an answer"
    except OSError as exc:
        return str(exc)
