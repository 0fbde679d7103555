"""``mco audit verify FILE...``: check the hash chain of JSON-lines audit logs."""

from __future__ import annotations

import sys

import click


@click.group()
def audit() -> None:
    """Work with the nodes' audit logs."""


@audit.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def verify(files: tuple[str, ...]) -> None:
    """Check that no line of FILES (oldest first, e.g. audit.jsonl.1 audit.jsonl) was
    edited, inserted or removed; report the first broken line.

    Exit status 0 when the chain is intact, 1 when it is broken.
    """
    from ..auditchain import verify as check

    try:
        report = check(files)
    except OSError as exc:
        raise click.ClickException(f"cannot read {exc.filename}: {exc.strerror}") from None
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if report.broken is not None:
        path, number, why = report.broken
        click.echo(f"{path}:{number}: chain broken: {why}")
        sys.exit(1)
    click.echo(f"{', '.join(files)}: {report.lines} line(s), chain intact")
