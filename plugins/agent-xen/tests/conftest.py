"""Fixtures for the xen agent's tests: a node on libvirt's real test driver, and a
node whose xl is :class:`~collective_agent_xen.testing.FakeXl` replaying recordings."""

from __future__ import annotations

from pathlib import Path

import pytest

import collective_agent_xen.plugin as xen_plugin
from collective.testing import require
from collective_agent_xen.testing import (
    FakeXl,
    TestDomain,
    libvirt_available,
    test_uri,
    write_node_xml,
)

DATA = Path(__file__).parent / "data"

#: the test host's domains: one running, one paused, one shut off
DOMAINS = [TestDomain("web01", "running", 1024, 2), TestDomain("db01", "paused", 2048, 2),
           TestDomain("old01", "shutoff", 512, 1)]


class LibvirtNode:
    """An in-process node whose xen agent talks to a libvirt ``test:///`` URI, and the
    raw libvirt connection the agent shares, to check states without the agent."""

    def __init__(self, node, uri: str) -> None:
        self.node = node
        self.uri = uri

    def call(self, action: str, **data):
        return self.node.call("xen", action, **data)

    def raw_state(self, name: str) -> int:
        """libvirt's own ``virDomainState`` number for ``name`` (1 running, 3 paused,
        5 shut off), read straight from the shared connection."""
        from collective_agent_xen.providers.libvirt import connection

        return connection(self.uri).lookupByName(name).state()[0]

    def states(self) -> dict[str, int]:
        from collective_agent_xen.providers.libvirt import connection

        return {d.name(): d.state()[0] for d in connection(self.uri).listAllDomains(0)}


@pytest.fixture
def libvirt_node(collective_node, tmp_path):
    """Factory: ``libvirt_node(domains=DOMAINS, **xen_settings)``."""
    why = libvirt_available()
    require(why is None, f"libvirt test driver: {why}")
    from collective_agent_xen.providers.libvirt import close_all

    def make(domains=None, **settings) -> LibvirtNode:
        path = write_node_xml(tmp_path / f"node-{len(list(tmp_path.glob('node-*.xml')))}.xml",
                              DOMAINS if domains is None else domains)
        uri = test_uri(path)
        config = {"plugins": {"xen": {"provider": "libvirt", "uri": uri, **settings}}}
        return LibvirtNode(collective_node(plugins=[xen_plugin], config=config), uri)

    yield make
    close_all()


def recording(name: str, **extra) -> dict:
    """A FakeXl reply printing the recorded file ``tests/data/NAME``."""
    return {"file": str(DATA / name), **extra}


#: what the fake xl answers by default: the recordings of a host with Domain-0, a
#: running web01 and a paused db01
BASE_REPLIES = {
    "list": recording("xl-list.txt"),
    "list -l": recording("xl-list-l.json"),
    "info": recording("xl-info.txt"),
    "shutdown": {"rc": 0},
    "reboot": {"rc": 0},
    "destroy": {"rc": 0},
    "pause": {"rc": 0},
    "unpause": {"rc": 0},
    "create": {"rc": 0},
    "migrate": {"rc": 0, "stderr_file": str(DATA / "xl-migrate-stderr.txt")},
}


@pytest.fixture
def xl_node(collective_node, tmp_path):
    """Factory: ``xl_node(replies=None, after=None, **xen_settings)`` -> (node, fake xl).

    The config directory holds ``web01.cfg``, ``db01.cfg`` and ``old01.cfg`` (old01 is
    shut off: xl knows it only by its config file)."""

    def make(replies=None, after=None, **settings):
        fake = FakeXl(tmp_path / "xl-bin", {**BASE_REPLIES, **(replies or {})}, after)
        config_dir = tmp_path / "etc-xen"
        config_dir.mkdir(exist_ok=True)
        for name in ("web01", "db01", "old01"):
            (config_dir / f"{name}.cfg").write_text(f'name = "{name}"\nmemory = 512\n')
        config = {"plugins": {"xen": {"provider": "xl", "xl": str(fake.path),
                                      "config_dir": str(config_dir), "settle_timeout": 5,
                                      **settings}}}
        return collective_node(plugins=[xen_plugin], config=config), fake

    return make
