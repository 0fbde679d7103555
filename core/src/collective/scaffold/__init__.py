"""``mco plugin generate agent|data|facts NAME``: a complete plugin distribution.

What is written builds a wheel and passes its own tests (``pytest`` in a venv with
collective-core, the plugin and its ``[test]`` extra) with no edit. Templates are
package data rendered with :class:`string.Template`; an agent's DDL is built here so
that it always validates against the meta-schema.

Names are checked before anything is written, and the distribution is written into a
temporary directory next to its destination and renamed into place, so an error never
leaves a half-written plugin behind.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from .. import __version__

__all__ = ["KINDS", "GenerateError", "Plan", "generate", "plan"]

#: what can be generated, and the word in the distribution name
KINDS = ("agent", "data", "facts")
#: plugin and action names: what the DDL allows, starting with a letter
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}", re.ASCII)
#: names that cannot be a new agent (built in) or an action (attributes of Agent)
RESERVED_AGENTS = frozenset({"rpcutil", "discovery", "mcollective", "collective"})
RESERVED_ACTIONS = frozenset({"name", "ddl", "config", "node", "log", "activate", "timeout",
                              "actions", "action_function"})
#: built-in data plugins and fact sources a new one must not shadow
RESERVED_DATA = frozenset({"fstat", "fact", "agent", "collective"})
RESERVED_FACTS = frozenset({"static"})


class GenerateError(Exception):
    """The name, the actions or the destination cannot be used; nothing was written."""


@dataclass(frozen=True)
class Plan:
    """Where a plugin goes and what it is called."""

    kind: str
    name: str
    directory: Path
    dist: str
    package: str
    entry: str
    classname: str
    actions: tuple[str, ...]


def _check_name(name: str, what: str) -> None:
    if not NAME.fullmatch(name or ""):
        raise GenerateError(f"{what} {name!r} is not usable: use a lower-case letter followed by "
                            "up to 39 lower-case letters, digits or _ (e.g. nginx_status)")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise GenerateError(f"{what} {name!r} is a Python keyword")


def plan(kind: str, name: str, directory: Path, actions: Sequence[str] = ()) -> Plan:
    """Check ``kind``, ``name`` and ``actions`` and work out the names.

    :raises GenerateError: a bad kind, name or action, or an existing destination
    """
    if kind not in KINDS:
        raise GenerateError(f"cannot generate {kind!r}: use one of {', '.join(KINDS)}")
    _check_name(name, f"{kind} name")
    reserved = {"agent": RESERVED_AGENTS, "data": RESERVED_DATA, "facts": RESERVED_FACTS}[kind]
    if name in reserved:
        raise GenerateError(f"{kind} name {name!r} is taken by a built-in of collective")
    chosen: tuple[str, ...] = ()
    if kind == "agent":
        chosen = tuple(actions) or ("echo",)
        for action in chosen:
            _check_name(action, "action name")
            if action in RESERVED_ACTIONS:
                raise GenerateError(f"action name {action!r} is an attribute of "
                                    "collective.agent.Agent and can never be an action")
        if len(set(chosen)) != len(chosen):
            raise GenerateError(f"--actions names an action twice: {','.join(chosen)}")
    elif actions:
        raise GenerateError(f"--actions is for agents, not for a {kind} plugin")
    hyphen = name.replace("_", "-")
    dist = f"collective-{kind}-{hyphen}"
    target = Path(directory) / dist
    if target.exists():
        raise GenerateError(f"{target} already exists: choose another --dir or name")
    classname = "".join(part.capitalize() for part in name.split("_"))
    suffix = {"agent": "", "data": "Data", "facts": "FactSource"}[kind]
    return Plan(kind=kind, name=name, directory=target, dist=dist,
                package=f"collective_{kind}_{name}", entry=f"{kind}-{hyphen}",
                classname=classname + suffix, actions=chosen)


def _template(kind: str, filename: str) -> Template:
    return Template((files(__package__) / "templates" / kind / filename).read_text())


def _ddl(p: Plan, description: str, author: str) -> str:
    actions = []
    for action in p.actions:
        actions.append({
            "action": action,
            "description": f"The {action} action of {p.name}: replace this description",
            "display": "always",
            "input": {
                "type": "object",
                "required": ["message"],
                "properties": {"message": {
                    "type": "string",
                    "description": f"What {action} works on",
                    "x-prompt": "Message",
                    "maxLength": 256,
                    "format": "shellsafe",
                }},
            },
            "output": {"result": {
                "description": f"What {action} gave",
                "display_as": "Result",
                "type": "string",
            }},
            "aggregate": [{"function": "summary", "args": ["result"]}],
        })
    ddl = {
        "$schema": "urn:collective:ddl:agent:v1",
        "metadata": {"name": p.name, "description": description, "author": author,
                     "license": "Apache-2.0", "version": "0.1.0",
                     "url": f"https://pypi.org/project/{p.dist}/", "timeout": 10},
        "actions": actions,
    }
    return json.dumps(ddl, indent=2) + "\n"


def _files(p: Plan, description: str, author: str) -> dict[str, str]:
    """Relative path -> content of every file of the distribution."""
    major, minor = (__version__.split(".") + ["0"])[:2]
    values = {
        "kind": p.kind, "name": p.name, "dist": p.dist, "package": p.package,
        "entry": p.entry, "classname": p.classname, "description": description,
        "author": author, "core_min": f"{major}.{minor}",
        "core_next": f"{major}.{int(minor) + 1}" if major == "0" else f"{int(major) + 1}",
        "first": p.actions[0] if p.actions else "",
    }
    src = f"src/{p.package}"
    wheel_assert = {
        "agent": (f"from {p.package} import __version__\n\n    "
                  f'assert found["ddls"]["{p.name}"] == __version__'),
        "data": f'assert "{p.name}" in found["data_plugins"]',
        "facts": f'assert "{p.name}" in found["fact_sources"]',
    }[p.kind]
    out = {
        "pyproject.toml": _template("common", "pyproject.toml.tmpl").substitute(values),
        ".gitignore": _template("common", "gitignore.tmpl").substitute(values),
        f"{src}/__init__.py": _template("common", "init.py.tmpl").substitute(values),
        f"{src}/py.typed": "",
        f"{src}/plugin.py": _template(p.kind, "plugin.py.tmpl").substitute(values),
        f"tests/test_{p.name}_plugin.py": _template("common", "test_plugin.py.tmpl").substitute(
            values, wheel_assert=wheel_assert),
    }
    if p.kind == "agent":
        methods = "".join(_template("agent", "action.py.tmpl").substitute(values, action=a)
                          for a in p.actions)
        tests = "".join(_template("agent", "test_action.py.tmpl").substitute(values, action=a)
                        for a in p.actions)
        rows = "\n".join(f"| `{a}` | `message` (text, at most 256 characters) | `result` |"
                         for a in p.actions)
        out[f"{src}/agent.py"] = _template("agent", "agent.py.tmpl").substitute(
            values, actions=methods)
        out[f"{src}/{p.name}.json"] = _ddl(p, description, author)
        out[f"tests/test_{p.name}_agent.py"] = _template("agent", "test_agent.py.tmpl").substitute(
            values, tests=tests)
        out["README.md"] = _template("agent", "README.md.tmpl").substitute(values, action_rows=rows)
    elif p.kind == "data":
        out[f"{src}/data.py"] = _template("data", "data.py.tmpl").substitute(values)
        out[f"tests/test_{p.name}_data.py"] = _template("data", "test_data.py.tmpl").substitute(values)
        out["README.md"] = _template("data", "README.md.tmpl").substitute(values)
    else:
        out[f"{src}/source.py"] = _template("facts", "source.py.tmpl").substitute(values)
        out[f"tests/test_{p.name}_facts.py"] = _template("facts", "test_facts.py.tmpl").substitute(
            values)
        out["README.md"] = _template("facts", "README.md.tmpl").substitute(values)
    return out


def generate(kind: str, name: str, directory: Path | str = ".", actions: Sequence[str] = (),
             description: str | None = None, author: str = "collective plugin author") -> Plan:
    """Write the distribution for a new ``kind`` plugin called ``name`` into
    ``directory/collective-KIND-NAME`` and return its :class:`Plan`.

    :raises GenerateError: bad names or an existing destination (nothing written)
    """
    p = plan(kind, name, Path(directory), actions)
    what = {"agent": "agent", "data": "data plugin", "facts": "fact source"}[kind]
    text = description or f"The {name} {what}."
    if any(c in text for c in '"\\\n\r') or len(text) > 200:
        raise GenerateError("--description must be one line of at most 200 characters "
                            'without " or \\')
    if any(c in author for c in '"\\\n\r') or not author.strip():
        raise GenerateError('--author must be one line without " or \\')
    contents = _files(p, text, author)
    parent = p.directory.parent
    if not parent.is_dir():
        raise GenerateError(f"{parent} is not a directory")
    scratch = Path(tempfile.mkdtemp(prefix=f".{p.dist}-", dir=parent))
    try:
        for relative, content in contents.items():
            path = scratch / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(scratch, 0o777 & ~umask)  # mkdtemp made it 0700
        if p.directory.exists():
            raise GenerateError(f"{p.directory} already exists: choose another --dir or name")
        os.rename(scratch, p.directory)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return p
