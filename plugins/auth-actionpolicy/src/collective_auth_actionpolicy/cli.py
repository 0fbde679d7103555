"""``mco policy check`` and ``mco policy explain``: offline, no broker.

Only click is imported here; the parser and the authorizer are imported inside
the command bodies.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


@click.group()
def policy() -> None:
    """Check and explain action policy files (offline, no broker).

    \b
    mco policy check /etc/collective/policies/*.policy --groups /etc/collective/policies/groups
    mco policy explain --caller cert=bob --agent service --action restart --fact role=web
    """


def _installed_functions() -> set[str] | None:
    try:
        from collective.plugins import get_plugin_manager

        return set(get_plugin_manager().data_plugins())
    except Exception:  # a broken plugin must not stop a syntax check
        return None


@policy.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--groups", "groups_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The groups file: check it too, and warn about group names missing from it.")
def check(files: tuple[Path, ...], groups_file: Path | None) -> None:
    """Report every error (file:line:col) and provable warning in policy FILES.

    Exit status 1 when any file has an error, else 0 (warnings do not fail).
    """
    from .check import Finding, lint
    from .parser import PolicyError, decode, parse_groups, parse_policy

    errors = warnings = 0
    groups = None

    def read(path: Path) -> bytes | None:
        nonlocal errors
        try:
            return path.read_bytes()
        except OSError as exc:
            click.echo(f"{path}: error: cannot read: {exc.strerror}")
            errors += 1
            return None

    if groups_file is not None:
        data = read(groups_file)
        if data is not None:
            try:
                groups = parse_groups(data, str(groups_file))
            except PolicyError as exc:
                for err in exc.errors:
                    click.echo(f"{err.location}: error: {err.message}")
                errors += len(exc.errors)
            else:
                for name, lines in sorted(groups.duplicates.items()):
                    for line in lines[:-1]:
                        click.echo(f"{groups_file}:{line}:1: warning: group {name!r} is defined "
                                   f"again at line {lines[-1]}, which replaces this line")
                        warnings += 1
    functions = _installed_functions()
    for path in files:
        data = read(path)
        if data is None:
            continue
        try:
            parsed = parse_policy(decode(data, str(path)), str(path))
        except PolicyError as exc:
            for err in exc.errors:
                click.echo(f"{err.location}: error: {err.message}")
            errors += len(exc.errors)
            continue
        findings: list[Finding] = lint(parsed, groups, functions)
        for finding in findings:
            click.echo(str(finding))
        warnings += len(findings)
    summary = (f"{len(files)} file(s) checked: {errors} error(s), {warnings} warning(s)")
    click.echo(summary, err=True)
    sys.exit(1 if errors else 0)


def _facts(pairs: tuple[str, ...]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--fact")
        facts[name] = value
    return facts


@policy.command()
@click.option("--policy-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where AGENT.policy lives (default: from the server config).")
@click.option("--groups", "groups_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The groups file (default: POLICY_DIR/groups).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Server config to take plugins.actionpolicy settings from.")
@click.option("--caller", required=True, help="The caller id, e.g. cert=alice.")
@click.option("--agent", required=True)
@click.option("--action", required=True)
@click.option("--fact", "facts", multiple=True, metavar="NAME=VALUE",
              help="A fact of the node (repeatable).")
@click.option("--class", "classes", multiple=True, metavar="CLASS",
              help="A class of the node (repeatable).")
@click.option("--identity", default="explain", show_default=True, help="The node's identity.")
@click.option("--allow-unconfigured/--no-allow-unconfigured", default=None,
              help="Override plugins.actionpolicy.allow_unconfigured.")
@click.option("--enable-default/--no-enable-default", default=None,
              help="Override plugins.actionpolicy.enable_default.")
@click.option("--default-name", default=None, help="Override plugins.actionpolicy.default_name.")
@click.option("-v", "--verbose", is_flag=True, help="Show every rule tried and why.")
def explain(policy_dir: Path | None, groups_file: Path | None, config_path: Path | None,
            caller: str, agent: str, action: str, facts: tuple[str, ...],
            classes: tuple[str, ...], identity: str, allow_unconfigured: bool | None,
            enable_default: bool | None, default_name: str | None, verbose: bool) -> None:
    """Would a request be allowed? Prints allow or deny, the deciding line, and why.

    Data plugin calls (fstat(...)) cannot be answered offline: they count as
    failed (an allow line does not match, a deny line does), as on a node
    where the plugin fails. Exit status 0 for allow, 1 for deny.
    """
    import dataclasses

    from collective.config import ConfigError, find_config, load_config

    from .authorizer import DEFAULT_NAME_RE, ActionPolicyAuthorizer, Settings
    from .policy import Request

    try:
        found = find_config("server", config_path) if policy_dir is None or config_path else None
        if config_path is not None and not config_path.exists():
            raise click.BadParameter(f"{config_path} does not exist", param_hint="--config")
        config = load_config(found, kind="server") if found and found.exists() else None
        settings = Settings.from_config(config) if config is not None else \
            Settings(policy_dir=Path("/etc/collective/policies"))
    except (ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    changes: dict[str, Any] = {}
    if policy_dir is not None:
        changes["policy_dir"] = policy_dir.resolve()
    if groups_file is not None:
        changes["groups_file"] = groups_file.resolve()
    if allow_unconfigured is not None:
        changes["allow_unconfigured"] = allow_unconfigured
    if enable_default is not None:
        changes["enable_default"] = enable_default
    if default_name is not None:
        if not DEFAULT_NAME_RE.fullmatch(default_name):
            raise click.BadParameter(f"{default_name!r} is not a policy name",
                                     param_hint="--default-name")
        changes["default_name"] = default_name
    settings = dataclasses.replace(settings, **changes)
    authorizer = ActionPolicyAuthorizer(settings=settings)
    request = Request(caller=caller, action=action, facts=_facts(facts), classes=list(classes),
                      identity=identity, data_resolver=None)
    verdict = authorizer.decide(agent, request, trace=True)
    click.echo("allow" if verdict.allowed else "deny")
    click.echo(f"  decided by: {verdict.rule}" if verdict.rule else "  decided by: no policy line")
    click.echo(f"  why: {verdict.reason}")
    if verbose:
        for step in verdict.trace:
            click.echo(f"  {step}")
    sys.exit(0 if verdict.allowed else 1)
