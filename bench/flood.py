"""Benchmark (not a test): `rpcutil ping` latency at one node during a request flood.

    .venv/bin/python bench/flood.py [--seconds 20] [--allowed 600] [--invalid 1000]
                                    [--slow 0] [--slow-seconds 5]
                                    [--invalid-to canary|rpcutil|node] [--work-to canary|node]
                                    [--broker embedded|rabbitmq]

Starts a real one-node fleet (embedded broker or the test RabbitMQ, one ``collectived``
process with the test-only canary agent installed into a private directory), then for
``--seconds`` seconds a separate flooder process publishes, paced every 10 ms:

- ``--allowed`` signed, authorized ``canary run`` requests per second (broadcast, the
  way ``mco rpc canary run`` sends them, or to the first node's directed queue with
  ``--work-to node``, as ``-I node-001`` does), replies to the flooder;
- ``--slow`` signed ``canary sleep`` requests per second, each sleeping
  ``--slow-seconds`` (default 5: past the canary's DDL timeout of 3 s, so each is
  stopped at its deadline; 0.5 for "slow-ish" actions that finish);
- ``--invalid`` requests per second with a broken signature from a trusted key id, the
  costliest kind of garbage (a full Ed25519 verify each), sent to the canary topic,
  the rpcutil topic or the node's directed queue (``--invalid-to``).

Meanwhile this process pings 5 times a second, alternating a broadcast ``rpcutil ping``
until every node answered and a directed one to the first node (``-I node-001``), each
bounded at 10 s, and samples the first node's
RSS and thread count. Printed: ping p50/p95/p99/max before and during the
flood, what the flooder sent and the replies it got by status, the node's counters
(``busy``, ``unvalidated``, ``timeouts`` ...), RSS and threads. Bounded in count and
time: at most ``seconds x (allowed + slow + invalid)`` messages, about ``seconds + 40`` s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def install_canary() -> str:
    """pip-install the test-only canary into a private directory (never into the venv)."""
    target = tempfile.mkdtemp(prefix="collective-bench-plugins-")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", target, str(ROOT / "tests" / "canary")],
                   check=True, capture_output=True, timeout=600)
    return target


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000

    return (f"p50 {pct(50):7.1f} ms  p95 {pct(95):7.1f} ms  p99 {pct(99):7.1f} ms  "
            f"max {ordered[-1] * 1000:7.1f} ms  (n={len(ordered)})")


# -- the flooder (a separate process, so its CPU is not this process's GIL) -------------------
def flooder(spec: dict[str, Any]) -> None:
    from collective.config import load_config
    from collective.connectors.destinations import Destination, stomp_send
    from collective.connectors.stomp import StompConnector
    from collective.message import RequestMessage
    from collective.plugins import get_plugin_manager, resolve

    config = load_config(spec["client_config"])
    pm = get_plugin_manager()
    security = resolve(config["security"]["provider"], pm.security_providers(),
                       "security provider")(config, role="client")
    connector = StompConnector(config, client_id="bench-flooder")
    connector.connect(timeout=10)
    from collective.connectors.destinations import caller_reply_name

    # the caller's own reply destination (nodes and the embedded broker insist)
    reply_dest = Destination.reply(config.main_collective,
                                   f"{caller_reply_name(security.identity)}.flooder")
    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def on_reply(wire: bytes) -> None:
        try:
            body = json.loads(base64.b64decode(json.loads(wire)["body"]))
            key = "ok" if body["statuscode"] == 0 else f"{body['statuscode']} {body['statusmsg'][:40]}"
        except Exception:  # noqa: BLE001 - a bench counts, it does not judge
            key = "undecodable"
        with lock:
            statuses[key] += 1

    connector.subscribe(reply_dest, on_reply)
    collective = config.main_collective
    flavour = connector.flavour

    directed = spec.get("work_to") == "node"

    def signed(agent: str, action: str, data: dict[str, Any]) -> bytes:
        message = RequestMessage.new(sender="bench", caller=security.identity,
                                     collective=collective, agent=agent, action=action, data=data,
                                     filter={}, ttl=60, reply_to=reply_dest.logical(),
                                     targets=[spec["node"]] if directed and agent == "canary"
                                     else None)
        return security.sign(message.to_body(), "request")

    bad = json.loads(signed("canary", "run", {"marker": "invalid"}))
    sig = bytearray(base64.b64decode(bad["sig"]))
    sig[0] ^= 0xFF
    bad["sig"] = base64.b64encode(bytes(sig)).decode()
    invalid_wire = json.dumps(bad).encode()
    invalid_dest = {"canary": Destination.broadcast(collective, "canary"),
                    "rpcutil": Destination.broadcast(collective, "rpcutil"),
                    "node": Destination.directed(collective, spec["node"])}[spec["invalid_to"]]
    canary_dest = (Destination.directed(collective, spec["node"]) if directed
                   else Destination.broadcast(collective, "canary"))
    send_headers = {d: stomp_send(d, flavour, 60) for d in {invalid_dest, canary_dest}}
    sent: Counter[str] = Counter()
    started = time.monotonic()
    tick = 0.01
    budget = {"allowed": 0.0, "slow": 0.0, "invalid": 0.0}
    rates = {"allowed": spec["allowed"], "slow": spec["slow"], "invalid": spec["invalid"]}
    conn = connector._session.conn  # noqa: SLF001 - unconfirmed SENDs, as fast as possible
    next_tick = started
    while time.monotonic() - started < spec["seconds"]:
        for kind, rate in rates.items():
            budget[kind] += rate * tick
            while budget[kind] >= 1:
                budget[kind] -= 1
                if kind == "allowed":
                    wire, dest = signed("canary", "run", {"marker": "flood"}), canary_dest
                elif kind == "slow":
                    wire, dest = signed("canary", "sleep", {"seconds": spec.get("slow_seconds", 5.0),
                                                            "marker": "slow"}), canary_dest
                else:
                    wire, dest = invalid_wire, invalid_dest
                destination, headers = send_headers[dest]
                headers = dict(headers)
                if "expires" in headers:
                    headers["expires"] = str(int(time.time() * 1000) + 60_000)
                conn.send(destination=destination, body=wire, headers=headers)
                sent[kind] += 1
        next_tick += tick
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - started
    time.sleep(spec["linger"])
    with lock:
        got = dict(statuses)
    print(json.dumps({"sent": dict(sent), "elapsed": elapsed, "replies": got}), flush=True)
    connector.disconnect()


# -- the bench ----------------------------------------------------------------------------------
def sample_process(pid: int, stop: threading.Event, out: dict[str, list[float]]) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.wait(0.5):
        try:
            with proc.oneshot():
                out["rss"].append(proc.memory_info().rss / 2**20)
                out["threads"].append(proc.num_threads())
                kids = proc.children(recursive=True)
            out["children"].append(len(kids))
            # PSS shares each shared page among the processes that map it: the sum is
            # what the daemon and its workers really cost together
            pss = proc.memory_full_info().pss
            for kid in kids:
                try:
                    pss += kid.memory_full_info().pss
                except psutil.Error:
                    pass
            out["tree_pss"].append(pss / 2**20)
        except psutil.Error:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--allowed", type=float, default=600.0)
    parser.add_argument("--invalid", type=float, default=1000.0)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--invalid-to", choices=("canary", "rpcutil", "node"), default="canary")
    parser.add_argument("--work-to", choices=("canary", "node"), default="canary",
                        help="where allowed and slow requests go (the canary topic, or the "
                             "first node's queue)")
    parser.add_argument("--broker", choices=("embedded", "rabbitmq"), default="embedded")
    parser.add_argument("--nodes", type=int, default=1,
                        help="collectived processes (each gets every broadcast)")
    parser.add_argument("--server-config", default="{}",
                        help="JSON sections merged into the node's config, e.g. "
                             '\'{"server": {"max_concurrent": 4}}\'')
    parser.add_argument("--flooder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flooder:
        flooder(json.loads(args.flooder))
        return
    args.seconds = min(args.seconds, 120.0)

    from collective.client import Client
    from collective.config import load_config
    from collective.fleet import BrokerSpec, fleet_down, fleet_up

    plugins = install_canary()
    os.environ["PYTHONPATH"] = os.pathsep.join([plugins, *filter(None, [os.environ.get("PYTHONPATH")])])
    sys.path.insert(0, plugins)
    rabbit = None
    spec = BrokerSpec()
    if args.broker == "rabbitmq":
        from collective.testing.rabbitmq import RabbitMQServer, rabbitmq_available

        why = rabbitmq_available()
        if why:
            sys.exit(f"rabbitmq: {why}")
        rabbit = RabbitMQServer()
        rabbit.start()
        spec = BrokerSpec(flavour="rabbitmq", host="127.0.0.1", port=rabbit.stomp_port,
                          user=rabbit.user, password=rabbit.password, vhost=rabbit.vhost)
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    extra = {"plugins": {"canary": {"log": str(tmp / "canary.log")}},
             "logging": {"level": "WARNING", "file": "collectived.log"}}
    for key, value in json.loads(args.server_config).items():
        extra[key] = {**extra.get(key, {}), **value} if isinstance(value, dict) else value
    try:
        fleet = fleet_up(tmp / "fleet", nodes=max(1, min(args.nodes, 20)), broker=spec,
                         extra_server_config=extra, timeout=120)
        node = fleet.nodes[0]
        pid = fleet.pids[node]
        print(f"{len(fleet.nodes)} node(s) on {args.broker} (figures for {node}, pid {pid}); "
              f"flood {args.seconds:g} s: "
              f"{args.allowed:g} allowed + {args.slow:g} slow ({args.slow_seconds:g} s) + "
              f"{args.invalid:g} invalid "
              f"(to {args.invalid_to}) requests/s; server config {args.server_config}")
        client = Client(load_config(fleet.client_config))
        client.connect()
        samples: dict[str, list[float]] = {"rss": [], "threads": [], "children": [], "tree_pss": []}
        stop = threading.Event()
        threading.Thread(target=sample_process, args=(pid, stop, samples), daemon=True).start()

        def probe(seconds: float, into: dict[str, list[float]], lost: Counter[str]) -> None:
            end = time.monotonic() + seconds
            turn = 0
            while time.monotonic() < end:
                kind = ("broadcast", "directed")[turn % 2]
                turn += 1
                t0 = time.perf_counter()
                if kind == "broadcast":
                    result = client.request("rpcutil", "ping", {}, expected=fleet.nodes,
                                            timeout=10)
                else:
                    result = client.request("rpcutil", "ping", {}, targets=[node], timeout=10)
                took = time.perf_counter() - t0
                if len([r for r in result.replies if r.statuscode == 0]) == (
                        len(fleet.nodes) if kind == "broadcast" else 1):
                    into[kind].append(took)
                else:
                    lost[kind] += 1
                    into[kind].append(took)
                time.sleep(max(0.0, 0.2 - took))

        idle: dict[str, list[float]] = {"broadcast": [], "directed": []}
        idle_lost: Counter[str] = Counter()
        probe(3.0, idle, idle_lost)
        idle_rss = samples["rss"][-1] if samples["rss"] else float("nan")
        idle_tree = samples["tree_pss"][-1] if samples["tree_pss"] else float("nan")
        idle_children = samples["children"][-1] if samples["children"] else 0
        flood_spec = {"client_config": str(fleet.client_config), "node": node,
                      "seconds": args.seconds, "allowed": args.allowed, "slow": args.slow,
                      "invalid": args.invalid, "invalid_to": args.invalid_to, "linger": 15.0,
                      "slow_seconds": args.slow_seconds, "work_to": args.work_to}
        flood = subprocess.Popen([sys.executable, __file__, "--flooder", json.dumps(flood_spec)],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let the flood build up
        during: dict[str, list[float]] = {"broadcast": [], "directed": []}
        lost: Counter[str] = Counter()
        probe(max(1.0, args.seconds - 1.5), during, lost)
        out, _ = flood.communicate(timeout=args.seconds + 120)
        report = json.loads(out.strip().splitlines()[-1])
        stop.set()
        for kind in ("broadcast", "directed"):
            print(f"ping {kind:9s} idle:   {percentiles(idle[kind])}")
            print(f"ping {kind:9s} flood:  {percentiles(during[kind])}  no reply in 10 s: "
                  f"{lost[kind]}")
        print(f"flooder sent {report['sent']} in {report['elapsed']:.1f} s")
        print(f"flooder got replies: {dict(sorted(report['replies'].items()))}")
        stats = client.request("rpcutil", "daemon_stats", {}, targets=[node], timeout=30)
        if stats.replies:
            data = stats.replies[0].data
            keys = ("total", "validated", "unvalidated", "passed", "busy", "timeouts", "replies",
                    "reply_failures", "threads")
            print("node counters: " + ", ".join(f"{k}={data.get(k)}" for k in keys))
            extra_stats = {k: data[k] for k in ("workers",) if k in data}
            if extra_stats:
                print(f"node workers: {extra_stats}")
        else:
            print("node counters: daemon_stats got no reply in 30 s")
        if samples["rss"]:
            print(f"daemon RSS: idle {idle_rss:.1f} MiB, max during flood {max(samples['rss']):.1f} MiB; "
                  f"PSS of the daemon and its {idle_children} child process(es): idle "
                  f"{idle_tree:.1f} MiB, max {max(samples['tree_pss']):.1f} MiB")
            print(f"daemon threads: max {max(samples['threads'])}; child processes: max "
                  f"{max(samples['children'])}")
        client.close()
    finally:
        try:
            fleet_down(tmp / "fleet", quiet=True)
        except Exception as exc:  # noqa: BLE001
            print(f"fleet down: {exc}")
        if rabbit is not None:
            rabbit.stop()


if __name__ == "__main__":
    main()
