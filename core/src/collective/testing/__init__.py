"""pytest fixtures for collective and its plugin authors (registered as ``pytest11``).

- ``collective_node``: an in-process node: the real DDL validation,
  authorization and dispatch, no broker, plugins passed in explicitly.
- ``collective_broker``: an embedded STOMP broker on an ephemeral loopback port.
- ``collective_fleet``: a real local fleet (broker + N ``collectived`` processes).
- ``collective_rabbitmq``: a private RabbitMQ with its STOMP plugin (session-wide).
- ``check_plugin(module)``: the checks every plugin should pass.
- ``require(what, why)``: skip locally, but *fail* under ``CI=true``, when a real
  component is missing.

Imports stay inside the fixtures: this module is loaded by every pytest run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def require(available: bool, why: str) -> None:
    """Skip when a real component is missing, except under CI where that is a failure."""
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required component missing under CI: {why}", pytrace=False)
    pytest.skip(why)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    """Poll ``predicate`` every ``step`` seconds until it is true or ``timeout`` seconds
    passed; its last value (``assert wait_for(lambda: ..., 10)``)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def wait_for_ping(config: Any, node: str, timeout: float = 20.0) -> bool:
    """Ping ``node`` with the client ``config`` until it answers (True) or ``timeout``
    seconds passed (False); a broker that is not up yet counts as no answer."""
    import time

    from ..client import Client, ClientError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Client(config) as client:
                if client.ping(expected=[node], timeout=1.0).replies:
                    return True
        except ClientError:
            time.sleep(0.2)
    return False


class InProcessNode:
    """A node without a broker: ``call()`` goes through DDL validation, authorization
    and dispatch exactly as ``collectived`` does after verifying a request.

    Without ``authorizer``, ``authorization.provider`` in ``config`` is resolved
    through the ``collective_authorizers`` hook of ``plugins``, as the daemon does; with
    neither, every caller is allowed (the node tests actions; a daemon without a provider
    denies everything unless ``authorization.allow_unconfigured`` is set).
    Facts come from ``facts.static`` in ``config``; ``classes`` are the node's
    classes. Data plugins (``fstat(...)`` in policies) are those of ``plugins``
    plus the built-ins.
    """

    def __init__(self, plugins: list[ModuleType], config: dict[str, Any] | None = None,
                 identity: str = "test-node", caller: str = "cert=tester",
                 authorizer: Any = None, load_entrypoints: bool = False,
                 classes: list[str] | None = None) -> None:
        from ..config import Config
        from ..ddl import AgentDDL
        from ..plugins import get_plugin_manager, resolve
        from ..server.dispatch import AgentHost, StaticNode

        data = {"identity": identity, **(config or {})}
        self.config = Config(data, kind="server", env={})
        self.pm = get_plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
        formats = self.pm.formats()
        ddls = {name: AgentDDL.load(res, formats=formats) for name, res in self.pm.ddl_files().items()}
        facts = dict(self.config.get("facts.static") or {})
        self.node = StaticNode(identity=identity, config=self.config, facts=facts,
                               classes=list(classes or []))
        provider = self.config.get("authorization.provider")
        if authorizer is None and provider:
            authorizer = resolve(provider, self.pm.authorizers(), "authorizer")(self.config)
        self.authorizer = authorizer
        self.host = AgentHost(self.config, self.node, self.pm.agents(), ddls, authorizer=authorizer,
                              data_plugins=self.pm.data_plugins())
        self.problems = self.host.load()
        self.caller = caller

    def call(self, agent: str, action: str, **data: Any) -> Any:
        """Run one action; returns the :class:`~collective.server.dispatch.Outcome`."""
        import time
        import uuid

        from ..server.dispatch import CallInfo

        info = CallInfo(request_id=uuid.uuid4().hex, caller=self.caller, sender="test-client",
                        agent=agent, action=action, data=data, collective="mcollective",
                        time=int(time.time() * 1000))
        outcome = self.host.prepare(info)
        return outcome if outcome is not None else self.host.run(info)


@pytest.fixture
def collective_node() -> Callable[..., InProcessNode]:
    """Factory: ``collective_node(plugins=[my_plugin], config={...})``."""
    return InProcessNode


@pytest.fixture
def collective_broker() -> Iterator[Any]:
    """A running embedded broker on 127.0.0.1 with an ephemeral port (``.port``).

    It asks no login (a broker the test runs in its own process, loopback only); ``mco
    broker`` and the fleet always require logins. For users and per-destination
    permissions build ``EmbeddedBroker(auth=BrokerAuth([User(...), ...]))``
    (:mod:`collective.broker.auth`)."""
    from ..broker import EmbeddedBroker

    broker = EmbeddedBroker(host="127.0.0.1", port=0)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def collective_rabbitmq() -> Iterator[Any]:
    """A private RabbitMQ node with the STOMP plugin on loopback, shared by the session
    (``.broker_config()`` gives the ``broker`` config section). Missing RabbitMQ
    skips locally and fails under ``CI=true``."""
    from .rabbitmq import RabbitMQServer, rabbitmq_available

    reason = rabbitmq_available()
    require(reason is None, f"RabbitMQ is not usable: {reason}")
    with RabbitMQServer() as server:
        yield server


@pytest.fixture(scope="session")
def collective_activemq() -> Iterator[Any]:
    """A private ActiveMQ broker (STOMP only) on loopback, shared by the session
    (``.broker_config()`` gives the ``broker`` config section, flavour ``activemq``).
    Missing ActiveMQ skips locally and fails under ``CI=true``."""
    from .activemq import ActiveMQServer, activemq_available

    reason = activemq_available()
    require(reason is None, f"ActiveMQ is not usable: {reason}")
    with ActiveMQServer() as server:
        yield server


@pytest.fixture
def collective_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """Factory: ``collective_fleet(nodes=3, broker=None, **kwargs)`` starts real daemons;
    every fleet started is stopped at teardown."""
    from ..fleet import fleet_down, fleet_up

    started: list[Path] = []

    def start(nodes: int = 3, broker: Any = None, **kwargs: Any) -> Any:
        directory = tmp_path_factory.mktemp("fleet")
        started.append(directory)
        return fleet_up(directory, nodes=nodes, broker=broker, **kwargs)

    try:
        yield start
    finally:
        for directory in started:
            try:
                fleet_down(directory, quiet=True)
            except Exception:  # already down (fleet_up cleans up after itself)
                pass


def plugin_distribution(module: ModuleType) -> Any:
    """The installed distribution whose ``collective`` entry point is ``module``
    (editable installs included), or None."""
    from importlib import metadata

    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == "collective" and ep.value == module.__name__:
                return dist
    return None


def check_plugin(module: ModuleType) -> None:
    """The checks every plugin passes (each failure is an ``AssertionError`` saying what
    to fix):

    - ``module`` is the ``collective`` entry point of an installed distribution, named
      like the distribution without ``collective-`` (``agent-nrpe`` for
      ``collective-agent-nrpe``); editable installs count;
    - each DDL validates against the meta-schema, and its ``metadata.version`` is the
      distribution's version;
    - DDL actions and ``@action`` methods match;
    - importing ``module`` in a fresh interpreter leaves the agent modules unloaded.
    """
    from ..agent import check_agent
    from ..ddl import AgentDDL
    from ..plugins import get_plugin_manager

    name = module.__name__
    dist = plugin_distribution(module)
    assert dist is not None, (
        f"{name} is not the 'collective' entry point of an installed distribution: declare "
        f"[project.entry-points.collective] in pyproject.toml and install it (pip install -e .)")
    dist_name = dist.metadata["Name"]
    [ep] = [ep for ep in dist.entry_points if ep.group == "collective" and ep.value == name]
    expected = dist_name.lower().replace("_", "-").removeprefix("collective-")
    assert ep.name == expected, (
        f"entry point {ep.name!r} of {dist_name} should be named {expected!r} (the "
        "distribution name without 'collective-')")
    pm = get_plugin_manager(load_entrypoints=False, plugins=[module])
    ddl_files = {k: v for k, v in pm.ddl_files().items() if v is not None}
    agents = {agent_name: cls for agent_name, cls in pm.agents().items()
              if cls.__module__.split(".")[0] == name.split(".")[0]}
    for agent_name, cls in agents.items():
        assert agent_name in ddl_files, f"agent {agent_name} has no DDL from {name}"
        ddl = AgentDDL.load(ddl_files[agent_name], formats=pm.formats())
        problems = check_agent(cls, ddl)
        assert not problems, "; ".join(problems)
        assert ddl.metadata["version"] == dist.version, (
            f"{agent_name} DDL {ddl.source}: metadata.version {ddl.metadata['version']} is not "
            f"the version of {dist_name}, {dist.version}")
    for resource in ddl_files.values():
        AgentDDL.load(resource, formats=pm.formats())  # a DDL without an agent must load too
    heavy = sorted({cls.__module__ for cls in agents.values()})
    code = (f"import sys, {name}; "
            f"loaded = [m for m in {heavy!r} if m in sys.modules]; "
            f"print(' '.join(loaded)); sys.exit(1 if loaded else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (f"importing {name} imported agent code ({proc.stdout.strip()}): "
                                  f"import agent modules inside the hooks {proc.stderr}")
