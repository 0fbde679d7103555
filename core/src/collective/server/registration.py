"""Periodic registration: a node publishes who it is and what it has.

With ``server.registration_interval`` > 0 the daemon starts a
:class:`RegistrationPublisher`. Soon after start, and then every interval (±10 %
jitter, so a fleet started together does not publish in lock step), it builds one
:class:`~collective.message.RegistrationMessage` per collective of the node — identity,
collectives, facts, classes, agents with their DDL versions, the interval and the
time — signs it with the *node* key for the purpose ``registration`` and publishes it
to ``C.registration``. Collectors (:class:`collective.inventory.Collector`,
``mco registry collect``) verify and record them.

Nothing here is fatal: a body over
:data:`~collective.message.MAX_REGISTRATION_BYTES` (facts can be large), facts that
cannot be encoded, or a publish failure are logged and counted, and the next
interval tries again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from ..message import MalformedMessage, RegistrationMessage

log = logging.getLogger(__name__)

#: Interval jitter: each wait is ``interval * uniform(1 - JITTER, 1 + JITTER)``.
JITTER = 0.10
#: The first registration goes out within this many seconds of start
#: (at most a tenth of the interval for short intervals).
FIRST_DELAY_MAX = 1.0


class RegistrationPublisher:
    """A thread that publishes ``daemon``'s registration every ``interval`` seconds.

    ``daemon`` needs ``identity``, ``collectives``, ``facts()``, ``classes()``,
    ``host.agents`` (name → agent with ``.ddl.metadata["version"]``), ``security`` (a
    node-role provider) and ``connector``; ``clock`` defaults to the daemon's.
    """

    def __init__(self, daemon: Any, interval: float, clock: Any = None,
                 jitter: float = JITTER, first_delay: float | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"registration interval must be positive, got {interval!r}")
        self.daemon = daemon
        self.interval = interval
        self.clock = clock or getattr(daemon, "clock", time.time)
        self.jitter = jitter
        self.first_delay = (random.uniform(0.0, min(FIRST_DELAY_MAX, interval / 10))
                            if first_delay is None else first_delay)
        self.stats: dict[str, int] = {"published": 0, "failed": 0, "skipped": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)
        self._thread.start()
        log.info("registration every %gs to %s", self.interval,
                 ", ".join(f"{c}.registration" for c in self.daemon.collectives))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def next_delay(self) -> float:
        return self.interval * random.uniform(1 - self.jitter, 1 + self.jitter)

    def _stopping(self) -> bool:
        stopping = getattr(self.daemon, "_stopping", None)
        return self._stop.is_set() or bool(stopping is not None and stopping.is_set())

    def _run(self) -> None:
        delay = self.first_delay
        while not self._stop.wait(delay) and not self._stopping():
            try:
                self.publish_once()
            except Exception:  # never let the thread die: the next interval tries again
                self.stats["failed"] += 1
                log.exception("registration failed")
            delay = self.next_delay()

    # -- one round -------------------------------------------------------------------
    def agents(self) -> list[dict[str, Any]]:
        out = []
        for name, agent in sorted(self.daemon.host.agents.items()):
            ddl = getattr(agent, "ddl", None)
            version = ddl.metadata.get("version") if ddl is not None else None
            out.append({"name": name, "version": str(version) if version is not None else None})
        return out

    def build(self, collective: str) -> RegistrationMessage:
        interval = max(1, int(round(self.interval)))
        return RegistrationMessage(
            identity=self.daemon.identity, collective=collective,
            collectives=list(self.daemon.collectives), facts=dict(self.daemon.facts()),
            classes=list(self.daemon.classes()), agents=self.agents(), interval=interval,
            time=int(self.clock() * 1000))

    def publish_once(self) -> int:
        """Publish one registration per collective; returns how many went out."""
        from ..connectors.destinations import Destination
        from ..connectors.stomp import ConnectorError

        sent = 0
        ttl = max(10.0, 2.0 * self.interval)
        for collective in self.daemon.collectives:
            registration = self.build(collective)
            try:
                body = registration.to_body()
            except MalformedMessage as exc:
                self.stats["skipped"] += 1
                log.warning("registration to %s skipped: %s", collective, exc)
                continue
            wire = self.daemon.security.sign(body, "registration")
            try:
                self.daemon.connector.publish(Destination.registration(collective), wire, ttl=ttl)
            except ConnectorError as exc:
                self.stats["failed"] += 1
                log.warning("registration to %s not published: %s", collective, exc)
                continue
            self.stats["published"] += 1
            sent += 1
        return sent
