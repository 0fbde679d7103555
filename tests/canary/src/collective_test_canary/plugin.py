from importlib.resources import files

from collective import hookimpl


@hookimpl
def collective_ddls():
    return [files(__package__) / "canary.json"]


@hookimpl
def collective_agents():
    from .agent import Canary

    return [Canary]
