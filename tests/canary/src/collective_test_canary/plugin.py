from importlib.resources import files

from collective import hookimpl


@hookimpl
def collective_ddls():
    return [files(__package__) / f"{name}.json" for name in ("canary", "lb", "pkgsim", "checksim")]


@hookimpl
def collective_agents():
    from .agent import Canary
    from .standins import Checksim, Lb, Pkgsim

    return [Canary, Checksim, Lb, Pkgsim]


@hookimpl
def collective_aggregates():
    from collective.aggregates import Aggregate, AggregateResult

    def count_true(values, args):
        return AggregateResult("numeric", sum(1 for v in values if v is True), "Count")

    return [Aggregate("canary_count", count_true, "how many nodes ran the canary")]
