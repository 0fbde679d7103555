"""A rolling upgrade behind load balancers, written against the collective Python API.

For each batch of web servers: take them out of every load balancer's pool,
upgrade the package, run a health check, and put back only the ones that pass.
A failing batch stops the rollout, leaving its failing nodes out of the pool.

    python docs/examples/rolling_upgrade.py -c fleet/client.yaml --package nginx \\
        --web 'role=web' --lb 'role=lb' --batch 2

The agent names are parameters: the defaults are the real ``package`` and
``nrpe`` agents and a load balancer agent called ``lb`` with ``disable`` /
``enable`` actions taking a ``backend``; the test suite runs this file against
stand-in agents with the same actions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from collective.client import Client, Result
from collective.config import load_config
from collective.filters import Filter, parse_fact


@dataclass
class Report:
    upgraded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    batches: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def _require_all(result: Result, nodes: list[str], step: str) -> dict[str, str]:
    """Nodes of ``nodes`` for which ``step`` did not succeed, with the reason."""
    problems = {node: "no response" for node in result.stats.no_response}
    problems.update({r.sender: r.statusmsg for r in result.failed})
    return {node: f"{step}: {why}" for node, why in problems.items() if node in nodes}


def rolling_upgrade(client: Client, package: str, *, web: Filter, lb: Filter, batch_size: int = 2,
                    check: str = "check_http", lb_agent: str = "lb", package_agent: str = "package",
                    check_agent: str = "nrpe", log: Callable[[str], None] = print) -> Report:
    """Upgrade ``package`` on the nodes matching ``web``, ``batch_size`` at a time."""
    balancers = client.discover(lb)
    servers = client.discover(web)
    if not balancers or not servers:
        raise SystemExit(f"nothing to do: {len(balancers)} load balancer(s), {len(servers)} web server(s)")
    log(f"{len(servers)} web server(s) behind {len(balancers)} load balancer(s): {', '.join(balancers)}")
    report = Report()
    for start in range(0, len(servers), batch_size):
        batch = servers[start:start + batch_size]
        report.batches += 1
        log(f"batch {report.batches}: {', '.join(batch)}")
        for node in batch:
            out = client.rpc(lb_agent, "disable", {"backend": node}, nodes=balancers)
            if _require_all(out, balancers, "disable"):
                raise SystemExit(f"could not take {node} out of every pool: {_require_all(out, balancers, 'disable')}")
        upgraded = client.rpc(package_agent, "update", {"package": package}, nodes=batch)
        failed = _require_all(upgraded, batch, "upgrade")
        checked = client.rpc(check_agent, "runcommand", {"command": check},
                             nodes=[n for n in batch if n not in failed])
        failed.update(_require_all(checked, batch, "check"))
        failed.update({r.sender: f"check: exit code {r.data.get('exitcode')}: {r.data.get('output')}"
                       for r in checked.ok if r.data.get("exitcode") != 0})
        for node in batch:
            if node in failed:
                continue
            client.rpc(lb_agent, "enable", {"backend": node}, nodes=balancers)
            report.upgraded.append(node)
        if failed:
            report.failed.update(failed)
            log(f"stopping: {len(failed)} node(s) failed and stay out of the pool: {failed}")
            break
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="client config")
    parser.add_argument("--package", required=True)
    parser.add_argument("--web", default="role=web", help="fact filter of the web servers")
    parser.add_argument("--lb", default="role=lb", help="fact filter of the load balancers")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--check", default="check_http")
    parser.add_argument("--lb-agent", default="lb")
    parser.add_argument("--package-agent", default="package")
    parser.add_argument("--check-agent", default="nrpe")
    args = parser.parse_args(argv)
    with Client(load_config(args.config)) as client:
        report = rolling_upgrade(
            client, args.package, web=Filter(fact=[parse_fact(args.web)]), lb=Filter(fact=[parse_fact(args.lb)]),
            batch_size=args.batch, check=args.check, lb_agent=args.lb_agent,
            package_agent=args.package_agent, check_agent=args.check_agent)
    print(f"upgraded: {', '.join(report.upgraded) or 'none'}")
    for node, why in report.failed.items():
        print(f"failed: {node}: {why}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
