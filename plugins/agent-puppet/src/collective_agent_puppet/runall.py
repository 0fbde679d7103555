"""``mco puppet runall N``: run Puppet on every enabled node, at most N applying at once.

As MCollective's ``Puppetrunner``: find the enabled nodes (discovery with
``puppet().enabled=true`` AND-ed to the user's filter, then a ``status`` call that also
tells which are applying already), start runs (``runonce`` with ``force``) while fewer
than N nodes are applying, then poll ``status`` of the nodes in flight once a second:
a node leaves the running set when it no longer applies and its ``lastrun`` is at or
after the ``initiated_at`` its ``runonce`` reported (both times from the node's clock).
A node that stays "not yet applying" for ``max_checks`` polls, misses ``max_missed``
polls, or applies longer than ``run_limit`` seconds is dropped with a log line, so the
loop always ends. With ``--rerun SECS`` it starts again, at most once per SECS.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ENABLED = "puppet().enabled=true"


@dataclass
class Track:
    """A node this loop counts as applying."""

    initiated_at: int = 0
    since: float = field(default_factory=time.monotonic)
    checks: int = 0
    missed: int = 0


@dataclass
class Iteration:
    """What one pass over the nodes did."""

    nodes: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    #: node -> why it was not started or was dropped
    failed: dict[str, str] = field(default_factory=dict)


class Runner:
    """One ``runall`` with its client, filter and puppet options.

    :param run_data: ``runonce`` inputs besides ``force`` (noop, tags, environment, ...)
    :param say: prints one log line
    :param sleep: how to wait between polls
    """

    def __init__(self, client: Any, flt: Any, discovery: dict[str, Any], concurrency: int,
                 run_data: dict[str, Any], say: Callable[[str], None], *,
                 discovery_timeout: float | None = None, poll: float = 1.0, max_checks: int = 5,
                 max_missed: int = 5, run_limit: float = 3600.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if concurrency < 1:
            raise ValueError("The concurrency for the runall command has to be greater than 0")
        self.client = client
        self.flt = flt
        self.discovery = discovery
        self.concurrency = concurrency
        self.run_data = {**run_data, "force": True}
        self.say = say
        self.discovery_timeout = discovery_timeout
        self.poll = poll
        self.max_checks = max_checks
        self.max_missed = max_missed
        self.run_limit = run_limit
        self.sleep = sleep

    # -- discovery and status --------------------------------------------------------------
    def enabled_filter(self) -> Any:
        flt = copy.deepcopy(self.flt)
        if flt.compound:
            self.say(f"Modifying user-specified filter: and'ing with '{ENABLED}'")
        flt.compound.append(ENABLED)
        return flt

    def find_enabled(self) -> tuple[list[str], dict[str, Track]]:
        """The enabled nodes, and those of them applying a catalog already."""
        self.say("Discovering enabled Puppet nodes to manage")
        flt = self.enabled_filter()
        targets, _performed, _stale = self.client.select_targets(
            flt, self.discovery.get("nodes"), self.discovery.get("method"),
            self.discovery_timeout, self.discovery.get("options"))
        if not targets:
            return [], {}
        result = self.client.rpc("puppet", "status", {}, nodes=targets)
        enabled, running = [], {}
        for reply in result.replies:
            if not reply.ok:
                self.say(f"{reply.sender} did not give its status: {reply.statusmsg}")
                continue
            if reply.data.get("enabled") is True:
                enabled.append(reply.sender)
                if reply.data.get("applying") is True:
                    running[reply.sender] = Track()
        for node in result.stats.no_response:
            self.say(f"Host {node} did not respond to the status action.")
        return sorted(enabled), running

    def update(self, running: dict[str, Track], iteration: Iteration) -> None:
        """Poll ``status`` of the running nodes; drop those that finished or gave up."""
        if not running:
            return
        result = self.client.rpc("puppet", "status", {}, nodes=sorted(running))
        replies = {reply.sender: reply for reply in result.replies}
        for node in sorted(running):
            track = running[node]
            reply = replies.get(node)
            if reply is None or not reply.ok:
                track.missed += 1
                self.say(f"Host {node} did not respond to the status action.")
                if track.missed >= self.max_missed:
                    self.say(f"Host {node} failed to respond multiple times. Skipping.")
                    iteration.failed[node] = "did not respond to status"
                    del running[node]
                continue
            if reply.data.get("applying") is True:
                if time.monotonic() - track.since > self.run_limit:
                    self.say(f"Host {node} has been applying for more than {self.run_limit:.0f}s. "
                             "Skipping.")
                    iteration.failed[node] = "applying for too long"
                    del running[node]
                continue
            if int(reply.data.get("lastrun") or 0) >= track.initiated_at:
                del running[node]  # finished
                continue
            track.checks += 1
            if track.checks >= self.max_checks:
                self.say(f"Host {node} did not move into an applying state. Skipping.")
                iteration.failed[node] = "did not start applying"
                del running[node]

    def kick(self, node: str) -> int | None:
        """``runonce`` on one node; its ``initiated_at``, or None when it refused."""
        result = self.client.rpc("puppet", "runonce", dict(self.run_data), nodes=[node])
        if not result.replies:
            self.say(f"{node} did not return a result")
            return None
        reply = result.replies[0]
        if not reply.ok:
            self.say(f"{node} schedule status: {reply.statusmsg}")
            return None
        self.say(f"{node} schedule status: {reply.data.get('summary')}")
        return int(reply.data.get("initiated_at") or 0)

    # -- the loops ---------------------------------------------------------------------------
    def once(self) -> Iteration:
        iteration = Iteration()
        self.say(f"Running all nodes with a concurrency of {self.concurrency}")
        hosts, running = self.find_enabled()
        iteration.nodes = hosts
        self.say(f"Found {len(hosts)} enabled {'node' if len(hosts) == 1 else 'nodes'}")
        todo = list(hosts)
        polls, last_waiting = 0, None
        while todo:
            kicked = False
            for node in list(todo):
                if len(running) >= self.concurrency:
                    break
                if node in running:
                    continue  # applying on its own; it gets its turn when it is done
                todo.remove(node)
                kicked = True
                initiated = self.kick(node)
                if initiated is None:
                    iteration.failed[node] = "runonce refused"
                    continue
                running[node] = Track(initiated_at=initiated)
                iteration.started.append(node)
            if not todo:
                break
            if kicked:
                self.say(f"{len(todo)} out of {len(hosts)} hosts left to run in this iteration")
            waiting = sorted(running)
            # say it when the set changes, else every 10 polls (MCollective said it each time)
            if len(running) >= self.concurrency and (waiting != last_waiting or polls % 10 == 0):
                count = len(running)
                self.say(f"Currently {count} {'node' if count == 1 else 'nodes'} applying the "
                         f"catalog; waiting for less than {self.concurrency}")
            last_waiting = waiting
            polls += 1
            self.sleep(self.poll)
            self.update(running, iteration)
        self.say(f"Iteration complete. Initiated a Puppet run on {len(iteration.started)} nodes.")
        return iteration

    def forever(self, min_time: float, loops: int | None = None) -> list[Iteration]:
        """``once`` again and again, each loop taking at least ``min_time`` seconds."""
        self.say("Performing ongoing Puppet run management with a minimum runtime of "
                 f"{min_time:.0f} seconds between loops")
        done: list[Iteration] = []
        while loops is None or len(done) < loops:
            started = time.monotonic()
            done.append(self.once())
            took = time.monotonic() - started
            if loops is not None and len(done) >= loops:
                break
            if took < min_time:
                self.say(f"Running all hosts took {took:.0f} seconds; sleeping for "
                         f"{min_time - took:.0f} seconds due to minimum run time configuration "
                         f"of {min_time:.0f} seconds")
                self.sleep(min_time - took)
            else:
                self.say(f"Running all hosts took {took:.0f} seconds; starting a new loop "
                         f"immediately due to minimum run time configuration of "
                         f"{min_time:.0f} seconds")
        return done
