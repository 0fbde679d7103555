"""Benchmark (not a test): `rpcutil ping` latency at a node while a trusted key that
policy denies everything sends the costliest filters it can construct.

    .venv/bin/python bench/prefilter.py [--count 200] [--rate 100] [--phase-seconds 60]
                                        [--only NAME,...]

Starts a real two-node fleet (embedded broker, two ``collectived`` processes; clients
``admin`` and ``mallory``; an actionpolicy that allows ``admin`` everything and
``mallory`` nothing). The nodes carry long facts like real ones: a 68-character ssh
host key, a 4,000-character ``motd`` and a 3,000-element ``packages`` list.

This process pings node-001 as admin throughout, alternately a broadcast ``rpcutil
ping`` (done when node-001 answered; on the node it shares the reserved lane with
discovery pings) and a directed one (``-I node-001``, the node's work lane), one after
the other, 20 ms apart, each bounded at 5 s. For each phase a separate
process signs requests with mallory's real key and publishes them raw (so they may
carry filters the client library refuses), ``--rate`` a second (``flood`` phases: as
fast as it can):

- ``idle``: nothing (the baseline);
- ``regex``: backtracking patterns that passed the old nested-quantifier check
  (``([\\w+/]|[\\w+/]{2})+!``, ``(a|aa)+$x``, ``(a|a?)+b``) against the long facts;
- ``terms``: 80 ``-S`` expressions of 4 KiB (256 list-fact comparisons each), 320 KiB;
- ``functions``: 255 different ``package()`` calls (each a dpkg-query run), and 8
  (within the caps: authorization first);
- ``worst``: the costliest filter within the caps: an ``or`` of 16 regexes and 160
  comparisons that never match, each tried on every element of the 3,000-element
  list, the regexes new in every message (never in the node's compile cache); it
  runs out of its CPU budget;
- ``fstat``: ``fstat('/root/...').size>N`` probes;
- ``replay``: fresh discovery pings with a 600 s ttl, to fill the replay cache;
- ``flood-worst``, ``flood-plain``: ``worst`` unpaced, and for comparison the same
  number of discovery pings with a plain one-fact filter: what any flood of signed
  messages costs the node, filters or not.

Printed per phase: messages sent and how fast, admin's ping n/p50/p99/max/missed, and
how node-001 counted them (``total`` includes admin's pings and these stats calls). Bounded: ``--count`` messages per attack phase (``replay``
sends ``4 x count``), each phase at most ``--phase-seconds``; about 2-4 minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

T = "\t"
SSHKEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
PHASES = ("idle", "regex", "terms", "functions", "worst", "fstat", "replay", "flood-worst",
          "flood-plain")
COUNTERS = ("total", "filtered", "passed", "denied", "filter_refused", "filter_budget",
            "filter_throttled", "filter_busy", "filter_deferred", "replayed", "ttlexpired",
            "replies")


def facts_for(index: int, identity: str) -> dict[str, Any]:
    return {"sshkey": SSHKEY, "motd": "a" * 4000 + "!",
            "packages": [f"package-{n}-1.{n % 7}" for n in range(3000)]}


def filters(phase: str) -> list[tuple[str, str, dict[str, Any], list[str] | None]]:
    """(agent, action, filter, targets) of one round of ``phase``."""
    if phase == "regex":
        return [("discovery", "ping", {"fact": [{"fact": "sshkey", "operator": "=~",
                                                 "value": r"([\w+/]|[\w+/]{2})+!"}]}, None),
                ("discovery", "ping", {"fact": [{"fact": "motd", "operator": "=~",
                                                 "value": "(a|aa)+$x"}]}, None),
                ("discovery", "ping", {"compound": ["motd=~/(a|a?)+b/"]}, None)]
    if phase == "terms":
        text = " or ".join(f"packages=nothing-{n}" for n in range(255))[:4096].rsplit(" or ", 1)[0]
        return [("discovery", "ping", {"compound": [text] * 80}, None)]
    if phase == "functions":
        many = " or ".join(f"package('pkg{n}').installed=true" for n in range(255))
        few = " or ".join(f"package('pkg{n}').installed=true" for n in range(8))
        return [("discovery", "ping", {"compound": [many[:4096].rsplit(" or ", 1)[0]]}, None),
                ("rpcutil", "ping", {"compound": [few]}, ["node-001"])]
    if phase == "flood-plain":
        return [("discovery", "ping", {"fact": [{"fact": "role", "operator": "==",
                                                 "value": "nothing"}]}, None)]
    if phase in ("worst", "flood-worst"):
        # OR of terms that never match: every one is tried on every list element
        # each message brings 16 new patterns (SEQ): none is in the node's compile cache
        regexes = [f"packages=~/{'(a|a?)+' * 2}[\\pL\\pN]q{n}_SEQ/" for n in range(16)]
        plain = [f"packages=nothing-{n}" for n in range(240)]
        text = " or ".join(regexes + plain)
        while len(text) > 4096:
            plain.pop()
            text = " or ".join(regexes + plain)
        return [("discovery", "ping", {"compound": [text]}, None)]
    if phase == "fstat":
        return [("discovery", "ping", {"compound": [f"fstat('/root/.bash_history').size>{n}"]}, None)
                for n in (0, 100, 10_000)]
    if phase == "replay":
        return [("discovery", "ping", {"identity": ["nobody"]}, None)] * 4
    return []


# -- the attacker (a separate process) ---------------------------------------------------

def attack(config: str, phase: str, count: int, rate: float) -> None:
    from collective.client import Client
    from collective.config import load_config
    from collective.message import RequestMessage

    client = Client(load_config(config))
    client.connect()
    round_ = filters(phase)
    sent = 0
    started = time.monotonic()
    paced = rate > 0 and not phase.startswith("flood")
    while sent < count * len(round_) and round_:
        for agent, action, flt, targets in round_:
            if paced:
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            flt = json.loads(json.dumps(flt).replace("SEQ", str(sent)))
            message = RequestMessage.new(
                sender=client.sender, caller=client.security.identity,
                collective=client.collective, agent=agent, action=action, data={}, filter=flt,
                ttl=600 if phase == "replay" else client.ttl,
                reply_to=client.reply_dest.logical(), targets=targets)
            client._publish(agent, client.security.sign(message.to_body(), "request"), targets)
            sent += 1
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    client.close()
    print(json.dumps({"sent": sent, "seconds": elapsed}))


# -- the measurement -------------------------------------------------------------------------

class Pinger(threading.Thread):
    """Alternately a broadcast ``rpcutil ping`` (done when node-001 answered: the node's
    reserved lane, where discovery pings arrive too) and a directed one (``-I node-001``:
    the node's work lane), one after the other, 20 ms apart."""

    KINDS = ("broadcast", "directed")

    def __init__(self, config: str) -> None:
        from collective.client import Client
        from collective.config import load_config

        super().__init__(daemon=True)
        self.client = Client(load_config(config))
        self.client.connect()
        self.samples: dict[str, list[float]] = {kind: [] for kind in self.KINDS}
        self.missed: dict[str, int] = dict.fromkeys(self.KINDS, 0)
        #: requests sent to node-001 (each counts once in its ``total``)
        self.issued = 0
        self.running = threading.Event()
        self.running.set()
        self.done = threading.Event()

    def run(self) -> None:
        n = 0
        while self.running.is_set():
            kind = self.KINDS[n % 2]
            n += 1
            started = time.monotonic()
            self.issued += 1
            if kind == "directed":
                result = self.client.request("rpcutil", "ping", {}, targets=["node-001"], timeout=5)
            else:
                result = self.client.request("rpcutil", "ping", {}, expected=["node-001"], timeout=5)
            if any(r.sender == "node-001" and r.statuscode == 0 for r in result.replies):
                self.samples[kind].append(time.monotonic() - started)
            else:
                self.missed[kind] += 1
            time.sleep(0.02)
        self.done.set()

    def take(self) -> tuple[dict[str, list[float]], dict[str, int]]:
        samples, missed = self.samples, self.missed
        self.samples = {kind: [] for kind in self.KINDS}
        self.missed = dict.fromkeys(self.KINDS, 0)
        return samples, missed


def describe(samples: list[float], missed: int) -> str:
    if not samples:
        return f"no ping answered ({missed} missed)"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"n={len(ordered):4d} p50={statistics.median(ordered) * 1000:7.1f} ms "
            f"p99={p99 * 1000:7.1f} ms max={ordered[-1] * 1000:7.1f} ms missed={missed}")


def node_counters(client: Any) -> dict[str, int]:
    result = client.request("rpcutil", "daemon_stats", {}, targets=["node-001"], timeout=10)
    if not result.replies or result.replies[0].statuscode != 0:
        return {}
    return {name: int(result.replies[0].data.get(name, 0)) for name in COUNTERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="rounds per attack phase")
    parser.add_argument("--rate", type=float, default=100,
                        help="messages per second in the paced phases")
    parser.add_argument("--phase-seconds", type=float, default=60)
    parser.add_argument("--only", default=",".join(PHASES))
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        attack(args.config, args.attack, args.count, args.rate)
        return
    from collective.client import Client
    from collective.config import load_config
    from collective.fleet import fleet_down, fleet_up

    phases = [p for p in args.only.split(",") if p in PHASES]
    with tempfile.TemporaryDirectory(prefix="bench-prefilter-") as tmp:
        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / "default.policy").write_text(
            f"policy default deny\nallow{T}cert=admin{T}*{T}*{T}*\n")
        started = time.perf_counter()
        fleet = fleet_up(Path(tmp) / "fleet", nodes=2, clients=["admin", "mallory"],
                         facts_for=facts_for, extra_server_config={
                             "authorization": {"provider": "actionpolicy"},
                             "plugins": {"actionpolicy": {"policy_dir": str(policies),
                                                          "enable_default": True}}})
        print(f"fleet of 2 up in {time.perf_counter() - started:.1f} s; "
              f"count={args.count} per phase")
        admin_config = str(fleet.client_config_for("admin"))
        mallory_config = str(fleet.client_config_for("mallory"))
        stats_client = Client(load_config(admin_config))
        pinger = Pinger(admin_config)
        try:
            pinger.start()
            for phase in phases:
                before = node_counters(stats_client)
                issued = pinger.issued
                pinger.take()
                if phase == "idle":
                    time.sleep(5)
                    sent = "nothing sent"
                else:
                    count = args.count * (4 if phase == "replay" else 1)
                    proc = subprocess.run([sys.executable, __file__, "--attack", phase,
                                           "--config", mallory_config, "--count", str(count),
                                           "--rate", str(args.rate)],
                                          capture_output=True, text=True,
                                          timeout=args.phase_seconds + 60)
                    report = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() \
                        else {"sent": 0, "seconds": 0}
                    if proc.returncode:
                        print(f"  ! attacker exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
                    deadline = time.monotonic() + args.phase_seconds
                    polls = 1
                    while time.monotonic() < deadline:  # until node-001 has seen them all
                        seen = node_counters(stats_client).get("total", 0) - before.get("total", 0)
                        polls += 1
                        if seen >= report["sent"] + (pinger.issued - issued) + polls - 1:
                            break
                        time.sleep(0.5)
                    sent = (f"sent {report['sent']} in {report['seconds']:.1f} s "
                            f"({report['sent'] / max(report['seconds'], 1e-9):.0f}/s)")
                time.sleep(1)
                samples, missed = pinger.take()
                after = node_counters(stats_client)
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS
                         if after.get(k, 0) != before.get(k, 0)}
                print(f"[{phase:11}] {sent}")
                for kind in Pinger.KINDS:
                    print(f"              {kind:9} ping: {describe(samples[kind], missed[kind])}")
                print(f"              node-001: {delta}")
        finally:
            pinger.running.clear()
            pinger.done.wait(10)
            pinger.client.close()
            stats_client.close()
            fleet_down(Path(tmp) / "fleet")


if __name__ == "__main__":
    main()
