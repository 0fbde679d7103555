"""Benchmark (not a test): broker RSS under a queue-creation flood. Prints figures.

    .venv/bin/python bench/broker_flood.py [--queues 200] [--size 1000000] [--max-seconds 60]
    .venv/bin/python bench/broker_flood.py --legacy --pythonpath /tmp/old/core/src   # before

Starts ``mco broker`` in its own process on a free loopback port (with ``--config``: one
``client`` user, the role a fleet's admin has) and, logged in as that user, sends one
message of ``--size`` bytes to each of ``--queues`` new queues
(``/queue/mcollective.node.flood-N``, which nobody reads), each SEND with a receipt. It
prints how many were stored and how many refused (ERROR), the broker's RSS before and
after, the time taken, and the round-trip time of one more SEND afterwards (is the broker
still answering?). ``--legacy`` runs a broker without ``--config`` (the code before
logins and global limits; point ``--pythonpath`` at such a tree). Bounded by
``--queues`` and ``--max-seconds``; loopback only.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collective.broker.auth import hash_password
from collective.broker.frames import SERVER_COMMANDS, FrameParser, encode_frame

USER, PASSWORD = "flooder", "flood-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stomp:
    def __init__(self, port: int, login: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.parser = FrameParser(commands=SERVER_COMMANDS, max_body=16 * 1024 * 1024)
        self.pending: list = []
        headers = {"accept-version": "1.2", "heart-beat": "0,0"}
        if login:
            headers.update(login=USER, passcode=PASSWORD)
        self.sock.sendall(encode_frame("CONNECT", headers))
        frame = self.read()
        if frame.command != "CONNECTED":
            raise SystemExit(f"broker refused the login: {frame.headers}")

    def read(self):
        while not self.pending:
            data = self.sock.recv(1 << 16)
            if not data:
                raise SystemExit("broker closed the connection")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def send(self, dest: str, body: bytes, rid: str) -> str:
        self.sock.sendall(encode_frame("SEND", {"destination": dest, "receipt": rid,
                                                "content-length": str(len(body))}, body))
        frame = self.read()
        if frame.command == "RECEIPT":
            return "stored"
        return frame.headers.get("message", frame.command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--size", type=int, default=1_000_000, help="bytes per message (<= 1 MiB)")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--legacy", action="store_true", help="broker without --config / logins")
    parser.add_argument("--pythonpath", default=None, help="run the broker from this source tree")
    args = parser.parse_args()

    port = free_port()
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    with tempfile.TemporaryDirectory(prefix="broker-flood-") as tmp:
        cmd = [sys.executable, "-m", "collective", "broker", "--log-level", "ERROR"]
        if args.legacy:
            cmd += ["--host", "127.0.0.1", "--port", str(port)]
        else:
            config = Path(tmp) / "broker.yaml"
            config.write_text(f"listeners: [{{host: 127.0.0.1, port: {port}}}]\n"
                              f"users: {{{USER}: {{password_hash: '{hash_password(PASSWORD)}', "
                              f"role: client}}}}\n")
            cmd += ["--config", str(config)]
        broker = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if broker.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"broker did not start: {broker.stderr.read().decode()[-500:]}"
                                         if broker.stderr else "broker did not start") from None
                    time.sleep(0.05)
            client = Stomp(port, login=not args.legacy)
            before = rss_mib(broker.pid)
            body = b"x" * args.size
            answers: dict[str, int] = {}
            started = time.perf_counter()
            sent = 0
            for i in range(args.queues):
                if time.perf_counter() - started > args.max_seconds:
                    break
                answer = client.send(f"/queue/mcollective.node.flood-{i}", body, f"r{i}")
                answers[answer] = answers.get(answer, 0) + 1
                sent += 1
            elapsed = time.perf_counter() - started
            time.sleep(0.5)
            after = rss_mib(broker.pid)
            t0 = time.perf_counter()
            last = client.send("/topic/mcollective.broadcast.rpcutil", b"ping", "last")
            rtt = (time.perf_counter() - t0) * 1000
            mode = "legacy (no logins, no global limits)" if args.legacy else "with --config"
            print(f"broker: {mode}")
            print(f"flood: {sent} SENDs of {args.size} bytes to new queues in {elapsed:.2f} s")
            print("answers: " + ", ".join(f"{k}={v}" for k, v in sorted(answers.items())))
            print(f"broker RSS: {before:.1f} MiB before, {after:.1f} MiB after "
                  f"(+{after - before:.1f} MiB)")
            print(f"one more SEND after the flood: {last}, {rtt:.1f} ms round trip")
        finally:
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
            if broker.stderr:
                broker.stderr.close()


if __name__ == "__main__":
    main()
