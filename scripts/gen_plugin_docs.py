"""Regenerate docs/plugins.md from the hookspec docstrings (run after changing a hook)."""

from __future__ import annotations

import inspect
from pathlib import Path

from collective import hookspecs

INTRO = """# Writing collective plugins

A plugin is a module named by an entry point in the group `collective`; the entry point's name is
the distribution name without `collective-` (`agent-nrpe`, `facts-yaml`). It implements any of the
hooks below with `from collective import hookimpl`. Registration hooks return iterables; the core
keys the results by name and refuses two plugins claiming one name. `COLLECTIVE_LOAD_PLUGINS=a,b`
loads only those (`''` none), `COLLECTIVE_DISABLE_PLUGINS=a` blocks one, and
`COLLECTIVE_STRICT_PLUGINS=1` turns a broken plugin into an error instead of a warning.
"""


def main() -> None:
    out = [INTRO]
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("collective_"):
            continue
        signature = f"{name}{inspect.signature(fn)}".replace("'", "")
        out += [f"## `{name}`", "", "```python", signature, "```", "", inspect.cleandoc(fn.__doc__ or ""), ""]
    Path(__file__).resolve().parents[1].joinpath("docs", "plugins.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
