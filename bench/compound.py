"""Benchmark (not a test): compound -S filters on a local fleet. Prints figures, asserts nothing.

    .venv/bin/python bench/compound.py [--nodes 50] [--repeat 5]

Starts a fleet (embedded broker + N collectived processes), then times through
the real `mco` (wall time, including interpreter start-up and the discovery
timeout that `mco find` waits out):

- `mco find -S "(role=web or role=cache) and location=uk"`
- `mco find -S 'fstat("/etc/hosts").size>0 and role=web'`
- for reference, `mco find -F role=web` (no compound filter)

and the client-side parse time of a few expressions, then stops the fleet.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collective.compound import MAX_CHARS, FilterSyntaxError, parse
from collective.fleet import fleet_down, fleet_up

EXPRESSIONS = [
    ["-S", "(role=web or role=cache) and location=uk"],
    ["-S", 'fstat("/etc/hosts").size>0 and role=web'],
    ["-F", "role=web"],
]


def fmt(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:7.1f} ms  (min {min(values) * 1000:.1f}, "
            f"max {max(values) * 1000:.1f}, n={len(values)})")


def timed_find(cfg: str, args: list[str], repeat: int, dt: float) -> tuple[list[float], set[int]]:
    times: list[float] = []
    counts: set[int] = set()
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "collective", "find", *args, "-c", cfg,
                               "--dt", str(dt)], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        counts.add(len(proc.stdout.split()))
        if proc.returncode not in (0, 1) or proc.stderr.strip():
            print(f"  ! exit {proc.returncode}: {proc.stderr.strip()[:300]}")
    return times, counts


def bench_parse() -> None:
    cases = {
        "short": "(role=web or role=cache) and location=uk",
        "function": 'fstat("/etc/hosts").size>0 and role=web',
        "255 terms": " or ".join(f"f{i}=v{i}" for i in range(255)),
        "4 KiB nested": (("(" * 32 + "a" + ")" * 32 + " and ") * 64)[:MAX_CHARS],
    }
    for name, text in cases.items():
        times = []
        for _ in range(20):
            started = time.perf_counter()
            try:
                parse(text)
            except FilterSyntaxError:
                pass
            times.append(time.perf_counter() - started)
        print(f"parse {name:<14} ({len(text):4d} chars): median {statistics.median(times) * 1e3:.3f} ms, "
              f"max {max(times) * 1e3:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dt", type=float, default=2.0, help="discovery timeout (s)")
    args = parser.parse_args()
    bench_parse()
    with tempfile.TemporaryDirectory(prefix="bench-compound-") as tmp:
        started = time.perf_counter()
        fleet = fleet_up(Path(tmp), nodes=args.nodes, timeout=300)
        print(f"[N={args.nodes}] fleet up in {time.perf_counter() - started:.1f} s")
        try:
            time.sleep(1)
            cfg = str(fleet.client_config)
            for expr in EXPRESSIONS:
                times, counts = timed_find(cfg, expr, args.repeat, args.dt)
                label = f"mco find {expr[0]} {expr[1]!r}"
                print(f"[N={args.nodes}] {label:<62} {fmt(times)}  matches {sorted(counts)}")
        finally:
            fleet_down(Path(tmp))


if __name__ == "__main__":
    main()
