"""Test helpers shared by this distribution's tests and the end-to-end test.

- :func:`write_node_xml`: a node file for libvirt's built-in ``test:///`` driver with
  domains in the states asked for (the driver keeps their state in its connection,
  and start, shutdown, destroy, suspend and resume really change it);
- :class:`FakeXl`: an ``xl`` executable that replays recorded ``xl`` output and
  logs every argv it was called with (one JSON line per call), for the xl provider,
  which needs a Xen hypervisor to run for real.

Nothing runs at import.
"""

from __future__ import annotations

import json
import sys
import uuid as uuid_module
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FakeXl", "TestDomain", "libvirt_available", "test_uri", "write_node_xml"]

#: ``virDomainState`` numbers for ``<test:runstate>``
RUNSTATES = {"running": 1, "paused": 3, "shutoff": 5}
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


@dataclass
class TestDomain:
    """One domain of a test node: its name, state (running, paused or shutoff),
    memory in MiB and vcpus."""

    __test__ = False  # not a pytest test class

    name: str
    state: str = "running"
    memory: int = 512
    vcpus: int = 1
    uuid: str | None = None
    os_type: str = "xen"

    def xml(self) -> str:
        uuid = self.uuid or str(uuid_module.uuid5(uuid_module.NAMESPACE_DNS, self.name + ".test"))
        kib = self.memory * 1024
        return (f"  <domain type='test' xmlns:test='{TEST_NS}'>\n"
                f"    <name>{self.name}</name>\n    <uuid>{uuid}</uuid>\n"
                f"    <memory>{kib}</memory>\n    <currentMemory>{kib}</currentMemory>\n"
                f"    <vcpu>{self.vcpus}</vcpu>\n    <os><type>{self.os_type}</type></os>\n"
                f"    <test:runstate>{RUNSTATES[self.state]}</test:runstate>\n  </domain>\n")


def write_node_xml(path: Path, domains: Iterable[TestDomain], cpus: int = 4,
                   memory_mib: int = 8192) -> Path:
    """Write a libvirt test-driver node file holding ``domains``; returns ``path``."""
    body = "".join(d.xml() for d in domains)
    path.write_text(
        "<node>\n"
        f"  <cpu><mhz>2400</mhz><model>x86_64</model><active>{cpus}</active><max>{cpus}</max>"
        f"<nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>\n"
        f"  <memory>{memory_mib * 1024}</memory>\n{body}</node>\n")
    return path


def test_uri(path: Path) -> str:
    """The ``test:///`` URI of a node file."""
    return f"test://{Path(path).resolve()}"


test_uri.__test__ = False  # type: ignore[attr-defined]


def libvirt_available() -> str | None:
    """None when the libvirt binding and its test driver work here, else why not."""
    try:
        import libvirt
    except ImportError:
        return "the libvirt Python binding is not installed (pip install libvirt-python)"
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        libvirt.open("test:///default").close()
    except libvirt.libvirtError as exc:
        return f"libvirt's test driver does not work: {exc}"
    return None


_FAKE = r'''#!{python}
"""Fake xl written by collective_agent_xen.testing.FakeXl: replays recorded output."""
import json, sys, time
ROOT = {root!r}
argv = sys.argv[1:]
with open(ROOT + "/argv.log", "a") as log:
    log.write(json.dumps(argv) + "\n")
with open(ROOT + "/script.json") as fh:
    script = json.load(fh)
try:
    with open(ROOT + "/state.json") as fh:
        state = json.load(fh)
except OSError:
    state = {{}}
key = " ".join(a for a in argv if a != "--" and not a.startswith("/"))
words = [a for a in argv if a != "--"]
reply = None
for candidate in (key, " ".join(words[:2]), words[0] if words else ""):
    if candidate in state.get("replies", {{}}):
        reply = state["replies"][candidate]
        break
    if candidate in script["replies"]:
        reply = script["replies"][candidate]
        break
if reply is None:
    sys.stderr.write("fake xl: no recording for: xl " + " ".join(argv) + "\n")
    sys.exit(2)
after = script.get("after", {{}}).get(words[0] if words else "")
if after:
    state.setdefault("replies", {{}}).update(after)
    with open(ROOT + "/state.json", "w") as fh:
        json.dump(state, fh)
time.sleep(reply.get("sleep", 0))
if reply.get("file"):
    with open(reply["file"]) as fh:
        sys.stdout.write(fh.read())
if reply.get("stderr_file"):
    with open(reply["stderr_file"]) as fh:
        sys.stderr.write(fh.read())
sys.stderr.write(reply.get("stderr", ""))
sys.exit(reply.get("rc", 0))
'''


class FakeXl:
    """An ``xl`` in ``directory`` that prints recorded output.

    :param replies: ``"list"``, ``"list -l"``, ``"info"``, ``"shutdown NAME"``, ... ->
        ``{"file": stdout recording, "stderr_file": stderr recording, "rc": 0,
        "sleep": 0}``; the key is the argv without ``--`` and absolute paths, else
        its first two words, else its first word
    :param after: first argv word -> replies that take over once that command ran
        (``{"destroy": {"list": {"file": "xl-list-after-destroy.txt"}}}``), so a
        later ``xl list`` shows what the real one would
    """

    def __init__(self, directory: Path, replies: Mapping[str, Mapping[str, Any]],
                 after: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "xl"
        self.log = self.dir / "argv.log"
        for stale in (self.log, self.dir / "state.json"):  # a new fake starts afresh
            stale.unlink(missing_ok=True)
        later = {word: {key: dict(reply) for key, reply in changes.items()}
                 for word, changes in (after or {}).items()}
        (self.dir / "script.json").write_text(json.dumps(
            {"replies": {key: dict(reply) for key, reply in replies.items()}, "after": later}))
        self.path.write_text(_FAKE.format(python=sys.executable, root=str(self.dir)))
        self.path.chmod(0o755)

    def calls(self) -> list[list[str]]:
        """Every argv xl was called with (without the program name), in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
