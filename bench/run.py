"""Benchmarks (not tests): print figures, assert nothing.

    .venv/bin/python bench/run.py [--nodes 10,50,100] [--brokers embedded,rabbitmq] [--repeat 3]

For each broker and fleet size N it starts a real local fleet (N collectived
processes) and measures, through the real `mco` command:
- `mco ping` wall time (includes the 2 s discovery timeout, which ping waits out),
- `mco rpc rpcutil ping -I <all N>` wall time (direct addressing, no discovery),
- the same two through the Python API (no interpreter start-up),
- the daemons' idle RSS (median and max),
and once: `mco --help` start-up time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collective.client import Client
from collective.config import load_config
from collective.fleet import BrokerSpec, fleet_down, fleet_up


def timed(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            print(f"  ! {' '.join(args[:6])}... exited {proc.returncode}: {proc.stderr.strip()[:200]}")
    return times


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:8.1f} ms  (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})"


def bench_help(repeat: int) -> None:
    mco = str(Path(sys.executable).with_name("mco"))
    print(f"mco --help start-up:             {fmt(timed([mco, '--help'], repeat))}")


def bench_fleet(broker: str, n: int, repeat: int, rabbit: object | None) -> None:
    mco = str(Path(sys.executable).with_name("mco"))
    with tempfile.TemporaryDirectory(prefix=f"bench-{broker}-{n}-") as tmp:
        spec = BrokerSpec()
        if broker == "rabbitmq":
            spec = BrokerSpec(flavour="rabbitmq", host="127.0.0.1", port=rabbit.stomp_port,  # type: ignore[attr-defined]
                              user=rabbit.user, password=rabbit.password, vhost=rabbit.vhost)  # type: ignore[attr-defined]
        started = time.perf_counter()
        fleet = fleet_up(Path(tmp), nodes=n, broker=spec, timeout=300)
        print(f"[{broker} N={n}] fleet up in {time.perf_counter() - started:.1f} s")
        try:
            time.sleep(2)
            rss = [rss_mb(pid) for name, pid in fleet.pids.items() if name != "broker"]
            print(f"[{broker} N={n}] daemon idle RSS: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB")
            cfg = str(fleet.client_config)
            print(f"[{broker} N={n}] mco ping (CLI, 2 s discovery): {fmt(timed([mco, 'ping', '-c', cfg], repeat))}")
            ids = [arg for node in fleet.nodes for arg in ("-I", node)]
            direct = timed([mco, "rpc", "rpcutil", "ping", "-c", cfg, *ids], repeat)
            print(f"[{broker} N={n}] mco rpc rpcutil ping -I x{n} (CLI): {fmt(direct)}")
            with Client(load_config(cfg)) as client:
                client.connect()
                api_ping, api_direct, replies = [], [], []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    result = client.ping(expected=fleet.nodes, timeout=10)
                    api_ping.append(time.perf_counter() - t0)
                    replies.append(len(result.replies))
                    t0 = time.perf_counter()
                    result = client.rpc("rpcutil", "ping", nodes=fleet.nodes)
                    api_direct.append(time.perf_counter() - t0)
                    replies.append(len(result.replies))
            print(f"[{broker} N={n}] API ping until all {n} answered:  {fmt(api_ping)}")
            print(f"[{broker} N={n}] API direct rpcutil ping x{n}:      {fmt(api_direct)}")
            print(f"[{broker} N={n}] replies per call: {sorted(set(replies))} of {n}")
        finally:
            fleet_down(Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="10,50,100")
    parser.add_argument("--brokers", default="embedded,rabbitmq")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_help(max(args.repeat, 5))
    sizes = [int(n) for n in args.nodes.split(",")]
    for broker in args.brokers.split(","):
        rabbit = None
        if broker == "rabbitmq":
            from collective.testing.rabbitmq import RabbitMQServer, rabbitmq_available

            why = rabbitmq_available()
            if why:
                print(f"[rabbitmq] skipped: {why}")
                continue
            rabbit = RabbitMQServer()
            rabbit.start()
        try:
            for n in sizes:
                bench_fleet(broker, n, args.repeat, rabbit)
        finally:
            if rabbit is not None:
                rabbit.stop()


if __name__ == "__main__":
    main()
