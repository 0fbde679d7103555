"""Entry point of ``collective-facts-yaml``: imported by every ``mco`` run, so it stays cheap."""

from __future__ import annotations

from collective import hookimpl


@hookimpl
def collective_fact_sources() -> list[type]:
    from .source import YamlFactSource  # only the daemon pays for this import

    return [YamlFactSource]
