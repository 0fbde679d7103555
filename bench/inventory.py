"""Inventory benchmark (not a test): prints figures, asserts nothing.

    .venv/bin/python bench/inventory.py [--nodes 1000] [--repeat 20]

1. Generates N node key pairs and N signed registrations with varied facts (roles,
   locations, OS, index) and classes.
2. Publishes them through an embedded broker to an in-process
   :class:`collective.inventory.Collector` (verify + record) and times how long until
   all N are recorded.
3. Times inventory discovery for a few filters through the discovery method (Python
   API: no interpreter start-up), and through the real ``mco find --dm inventory``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from collective.broker import EmbeddedBroker
from collective.client import Client
from collective.client.discovery import discover
from collective.config import Config
from collective.connectors.destinations import Destination
from collective.connectors.stomp import StompConnector
from collective.filters import Filter, parse_fact
from collective.fleet import sample_facts
from collective.inventory import Collector, Inventory
from collective.message import RegistrationMessage, encode_wire
from collective.plugins import get_plugin_manager
from collective.security.base import DOMAINS
from collective.security.keys import generate_keypair, key_id, load_private_key

FILTERS: list[tuple[str, list[str], Filter]] = [
    ("(no filter)", [], Filter()),
    ("-F role=web", ["-F", "role=web"], Filter(fact=[parse_fact("role=web")])),
    ("-F location=uk -C role::db", ["-F", "location=uk", "-C", "role::db"],
     Filter(fact=[parse_fact("location=uk")], cf_class=["role::db"])),
    ("-I /^node-00[0-4]/", ["-I", "/^node-00[0-4]/"], Filter(identity=["/^node-00[0-4]/"])),
    ("-F os.family=debian -F index>=500", ["-F", "os.family=debian", "-F", "index>=500"],
     Filter(fact=[parse_fact("os.family=debian"), parse_fact("index>=500")])),
]


def fmt(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:8.2f} ms  (min {min(values) * 1000:.2f}, "
            f"max {max(values) * 1000:.2f}, n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    n = args.nodes

    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp_name:
        tmp = Path(tmp_name)
        keys, trust = tmp / "keys", tmp / "trust"
        for sub in ("clients", "nodes"):
            (trust / sub).mkdir(parents=True)

        started = time.perf_counter()
        generate_keypair("admin", keys)
        shutil.copy(keys / "admin.pub", trust / "clients" / "admin.pub")
        identities = [f"node-{i:04d}" for i in range(1, n + 1)]
        for identity in identities:
            generate_keypair(identity, keys)
            shutil.copy(keys / f"{identity}.pub", trust / "nodes" / f"{identity}.pub")
        print(f"{n} node key pairs generated:       {time.perf_counter() - started:8.2f} s")

        started = time.perf_counter()
        wires = []
        now_ms = int(time.time() * 1000)
        for index, identity in enumerate(identities, start=1):
            facts, classes = sample_facts(index, identity)
            body = RegistrationMessage(
                identity=identity, collective="mcollective", collectives=["mcollective"],
                facts=facts, classes=classes,
                agents=[{"name": "rpcutil", "version": "0.1.0"}, {"name": "nrpe", "version": "1.0.0"}],
                interval=300, time=now_ms).to_body()
            key = load_private_key(keys / f"{identity}.key")
            wires.append(encode_wire("ed25519", key_id(key.public_key()),
                                     key.sign(DOMAINS["registration"] + body), body))
        sizes = sorted(len(w) for w in wires)
        print(f"{n} registrations signed:           {time.perf_counter() - started:8.2f} s "
              f"(wire median {sizes[len(sizes) // 2]} bytes)")

        broker = EmbeddedBroker(host="127.0.0.1", port=0).start()
        try:
            section = {"port": broker.port, "heartbeat_ms": 10000}
            client_data = {
                "identity": "bench-client", "broker": section,
                "security": {"identity": "admin", "private_key": str(keys / "admin.key"),
                             "trust_dir": str(trust)},
                "discovery": {"inventory": str(tmp / "inventory.db")},
            }
            config = Config(client_data, kind="client", env={})
            (tmp / "client.yaml").write_text(yaml.safe_dump(client_data))
            pm = get_plugin_manager(load_entrypoints=False)

            started = time.perf_counter()
            inventory = Inventory(tmp / "inventory.db")
            collector = Collector(config, inventory, pm=pm)
            collector.start(timeout=10)
            print(f"collector start (trust store of {n + 1} keys): "
                  f"{time.perf_counter() - started:8.2f} s")

            publisher = StompConnector(config, client_id="bench-publisher")
            publisher.connect(timeout=10)
            dest = Destination.registration("mcollective")
            started = time.perf_counter()
            for wire in wires:
                publisher.publish(dest, wire)
            published = time.perf_counter() - started
            deadline = time.monotonic() + 120
            while len(inventory) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            recorded = time.perf_counter() - started
            publisher.disconnect()
            print(f"published {n} (each with a receipt): {published:8.2f} s")
            print(f"all {len(inventory)} recorded after:          {recorded:8.2f} s "
                  f"({n / recorded:.0f} registrations/s end to end)  stats={collector.stats}")
            collector.stop()
            inventory.close()

            print(f"\ninventory discovery over {n} nodes, discovery method (Python API):")
            with Client(config, pm=pm) as client:
                for label, _argv, flt in FILTERS:
                    times = []
                    found = None
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        found = discover(client, "inventory", flt, None, {})
                        times.append(time.perf_counter() - t0)
                    assert found is not None
                    print(f"  {label:<36} {len(found.nodes):5d} nodes  {fmt(times)}")

            mco = [sys.executable, "-m", "collective"]
            print(f"\n`mco find --dm inventory` (a new interpreter each time, repeat "
                  f"{max(3, args.repeat // 4)}):")
            for label, argv, _flt in FILTERS:
                times = []
                count = 0
                for _ in range(max(3, args.repeat // 4)):
                    t0 = time.perf_counter()
                    proc = subprocess.run([*mco, "find", "--dm", "inventory", *argv,
                                           "-c", str(tmp / "client.yaml")],
                                          capture_output=True, text=True, timeout=120)
                    times.append(time.perf_counter() - t0)
                    if proc.returncode not in (0, 1):
                        print(f"  ! mco find exited {proc.returncode}: {proc.stderr.strip()[:200]}")
                        break
                    count = len(proc.stdout.split())
                print(f"  {label:<36} {count:5d} nodes  {fmt(times)}")
            times = []
            for _ in range(max(3, args.repeat // 4)):
                t0 = time.perf_counter()
                subprocess.run([*mco, "--help"], capture_output=True, timeout=60)
                times.append(time.perf_counter() - t0)
            print(f"  {'(mco --help, for comparison)':<36} {'':5}        {fmt(times)}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
