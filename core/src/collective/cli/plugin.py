"""``mco plugin list`` and ``mco plugin doc AGENT``."""

from __future__ import annotations

import json
from typing import Any

import click

from .options import filter_options


@click.group()
def plugin() -> None:
    """Inspect installed plugins."""


@plugin.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins")
@click.option("-j", "--json", "as_json", is_flag=True, help="Print JSON")
def list_plugins(show_all: bool, as_json: bool) -> None:
    """List plugins: distribution, version, load status, and what each registered
    (agents, data plugins, fact sources, commands, ...).

    Works when a plugin is broken: its status says why. Agents are shown by their DDLs,
    so listing never imports agent code.
    """
    from ..plugins import get_plugin_manager

    pm = get_plugin_manager()
    registered = pm.registrations()
    rows = [s for s in sorted(pm.statuses.values(), key=lambda s: s.name) if show_all or not s.builtin]
    if as_json:
        click.echo(json.dumps([{"name": s.name, "distribution": s.distribution, "version": s.version,
                                "status": s.status, "hooks": s.hooks, "builtin": s.builtin,
                                "registered": registered.get(s.name, {})}
                               for s in rows], indent=2))
        return
    if not rows:
        click.echo("No plugins installed (use --all to include the built-in ones).")
        return
    width = max(len(s.name) for s in rows) + 2
    dist_width = max(len(f"{s.distribution} {s.version}") for s in rows) + 2
    for s in rows:
        status = s.status if s.status == "ok" else click.style(s.status, fg="red")
        click.echo(f"{s.name:<{width}}{s.distribution + ' ' + s.version:<{dist_width}}{status}")
        what = registered.get(s.name, {})
        if what:
            click.echo(" " * width + "; ".join(f"{kind}: {', '.join(names)}"
                                               for kind, names in what.items()))


def render_ddl(ddl: Any) -> str:
    meta = ddl.metadata
    out = [meta["name"], "=" * len(meta["name"]), "", meta["description"], ""]
    for label, key in (("Author", "author"), ("Version", "version"), ("License", "license"),
                       ("Timeout", "timeout"), ("Home Page", "url")):
        out.append(f"{label:>12}: {_shown(meta.get(key))}")
    out += ["", "ACTIONS:", "========", "   " + ", ".join(sorted(ddl.actions)), ""]
    for name in sorted(ddl.actions):
        act = ddl.actions[name]
        title = f"{name} action:"
        out += [f"   {title}", "   " + "-" * len(title), f"       {act.description}", "",
                "       INPUT:"]
        if not act.inputs:
            out.append("           This action does not have any inputs")
        for key, schema in sorted(act.inputs.items()):
            out.append(f"           {key}:")
            out.append(f"              Description: {schema.get('description', '')}")
            out.append(f"                   Prompt: {schema.get('x-prompt', key)}")
            out.append(f"                     Type: {_shown(schema.get('type', 'any'))}")
            for label, k in (("Format", "format"), ("Validation", "pattern"), ("Length", "maxLength"),
                             ("Values", "enum"), ("Default", "default")):
                if k in schema:
                    out.append(f"{label:>25}: {_shown(schema[k])}")
            out.append(f"                 Optional: {'false' if key in act.required else 'true'}")
            out.append("")
        out += ["", "       OUTPUT:"]
        for key, spec in sorted(act.outputs.items()):
            out += [f"           {key}:", f"              Description: {spec.get('description', '')}",
                    f"               Display As: {spec.get('display_as', key)}"]
            if "default" in spec:
                out.append(f"            Default Value: {_shown(spec['default'])}")
            out.append("")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _shown(value: object) -> str:
    """A DDL value as its DDL has it: strings as they are, anything else as JSON
    (``false``, ``null``, ``["a", "b"]``), never Python's spelling."""
    import json

    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@plugin.command("doc")
@click.argument("agent")
@filter_options
@click.option("-c", "--config", "config_path", default=None, metavar="FILE", envvar="COLLECTIVE_CONFIG",
              help="Client config file (used to fetch a DDL that is not installed here)")
@click.option("--refresh", is_flag=True, help="Ask the nodes again even if the cached DDL is fresh")
@click.option("-j", "--json", "as_json", is_flag=True, help="Print the DDL document as JSON")
@click.option("-v", "--verbose", is_flag=True, help="Verbose output")
def doc(agent: str, flt: Any, collective: str | None, discovery_timeout: float | None,
        config_path: str | None, refresh: bool, as_json: bool, verbose: bool) -> None:
    """Render AGENT's DDL: metadata, actions, inputs and outputs.

    Without AGENT's plugin installed here the DDL comes from the nodes the filter
    options select (or from the cache of DDLs fetched before), and the first line
    says where it came from.

    \b
    mco plugin doc nrpe
    mco plugin doc nrpe -I node-001 --refresh
    """
    from ..ddl import AgentDDL, DDLError
    from ..plugins import get_plugin_manager

    pm = get_plugin_manager()
    files = pm.ddl_files()
    note = None
    if agent in files:
        try:
            ddl = AgentDDL.load(files[agent], formats=pm.formats())
        except DDLError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        from ..client import ClientError
        from ..config import ConfigError
        from ..security.base import SecurityError
        from .options import make_client

        try:
            with make_client(config_path, collective) as client:
                ddl = client.ddl(agent, filter=flt, refresh=refresh)
                note = client.ddl_source(agent).describe()
        except (ClientError, ConfigError, DDLError, SecurityError, OSError) as exc:
            if verbose:
                import traceback

                traceback.print_exc()
            raise click.ClickException(
                f"No DDL found for agent {agent!r}: not installed here (installed: "
                f"{', '.join(files) or 'none'}) and not fetched from the nodes: {exc}") from None
    if as_json:
        if note:
            click.echo(note, err=True)
        click.echo(json.dumps(ddl.to_dict(), indent=2, sort_keys=True))
        return
    if note:
        click.echo(note + "\n")
    click.echo(render_ddl(ddl), nl=False)
    for fmt, uses in sorted(ddl.unchecked_formats.items()):
        where = ", ".join(f"{action}.{name}" for action, name in uses)
        click.echo(f"\nFormat {fmt} ({where}) comes with the agent's plugin, which is not installed "
                   "here: the client does not check it, the nodes do.")


def _add_generate() -> None:
    from .generate import generate

    plugin.add_command(generate)


_add_generate()
