"""The node's filter stage (collective.server.prefilter): what a filter may cost before
authorization, and which filters wait for it."""

from __future__ import annotations

import threading
import types
import uuid
from collections import Counter
from types import MappingProxyType

from collective.data import BUILTIN_DATA_PLUGINS, DataPlugin, instantiate
from collective.server.prefilter import DEFER, MATCH, NO_MATCH, CallerShares, Prefilter

FACTS = {"role": "web", "packages": [f"package-{n}" for n in range(20_000)]}


class Slow(DataPlugin):
    name = "slow"
    outputs = {"ok": "ok"}
    default_output = "ok"
    release = threading.Event()
    ran: list[str] = []

    def query(self, argument, node):
        Slow.ran.append(threading.current_thread().name)
        Slow.release.wait(5)
        return {"ok": True}


class Busy(DataPlugin):
    """A data plugin that burns CPU like a process table scan (psutil, dpkg-query)."""

    name = "busy"
    outputs = {"ok": "ok"}
    default_output = "ok"

    def query(self, argument, node):
        import time

        end = time.thread_time() + 0.1  # five times the filter's own CPU budget
        while time.thread_time() < end:
            pass
        return {"ok": True}


class Node:
    identity = "node-001"

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        plugins = instantiate({p.name: p for p in (*BUILTIN_DATA_PLUGINS, Slow, Busy)})
        self.host = types.SimpleNamespace(agents={"rpcutil": object()},
                                          data_plugin_instances=lambda: plugins)
        self.facts_store = types.SimpleNamespace(view=lambda: MappingProxyType(FACTS))

    def facts(self):
        raise AssertionError("the filter stage reads facts without copying them")

    def classes(self):
        return ["base"]

    def agent_ddls(self):
        return {"rpcutil": None}

    def count(self, name: str) -> None:
        self.counters[name] += 1


def request(flt, caller="cert=mallory", targets=None):
    return types.SimpleNamespace(filter=flt, caller=caller, targets=targets, id=uuid.uuid4().hex)


def test_plain_filters_are_decided_on_the_spot():
    stage = Prefilter(Node())
    assert stage.screen(request({})).verdict == MATCH
    assert stage.screen(request({"fact": [{"fact": "role", "operator": "==", "value": "web"}]})).verdict == MATCH
    assert stage.screen(request({"compound": ["role=db"]})).verdict == NO_MATCH
    assert stage.screen(request({}, targets=["node-002"])).verdict == NO_MATCH
    assert stage.screen(request({"compound": ["fact('role').value=web and agent('rpcutil')"]})).verdict == MATCH


def test_filters_over_the_caps_do_not_match_and_are_counted():
    node = Node()
    stage = Prefilter(node)
    for flt in ({"cf_class": [f"/^c{n}/" for n in range(17)]},
                {"compound": ["a" * 3000, "b" * 3000]},
                {"fact": [{"fact": "x", "operator": "=~", "value": "(?=y)"}]},
                {"bogus": []}, ["not", "an", "object"]):
        screen = stage.screen(request(flt))
        assert (screen.verdict, screen.reason) == (NO_MATCH, "filter_refused"), flt
    assert node.counters["filter_refused"] == 5


def test_a_filter_that_runs_out_of_budget_does_not_match():
    node = Node()
    stage = Prefilter(node, cpu_budget=0.002)
    flt = {"compound": [" or ".join(f"packages=nothing-{n}" for n in range(50))]}
    screen = stage.screen(request(flt))
    assert (screen.verdict, screen.reason) == (NO_MATCH, "filter_budget")
    assert Prefilter(Node(), cpu_budget=None).screen(request(flt)).verdict == NO_MATCH  # finishes


def test_a_caller_over_its_share_is_not_evaluated_and_others_are():
    node = Node()
    stage = Prefilter(node, cpu_budget=0.01, shares=CallerShares(rate=0.0, burst=0.03))
    costly = {"compound": [" or ".join(f"packages=nothing-{n}" for n in range(50))]}
    reasons = [stage.screen(request(costly)).reason for _ in range(10)]
    assert reasons.count("filter_budget") <= 5 and reasons[-1] == "filter_throttled"
    # another caller has its own share
    ok = stage.screen(request({"compound": ["role=web"]}, caller="cert=admin"))
    assert ok.verdict == MATCH


def test_caller_shares_refill():
    now = [0.0]
    shares = CallerShares(rate=0.1, burst=0.2, clock=lambda: now[0])
    shares.charge("cert=a", 0.5)
    assert not shares.allowed("cert=a") and shares.allowed("cert=b")
    now[0] = 3.1  # -0.3 + 3.1 * 0.1 > 0
    assert shares.allowed("cert=a")


def test_data_plugins_are_deferred_and_run_only_in_the_data_pool():
    node = Node()
    stage = Prefilter(node)
    Slow.ran.clear()
    Slow.release.clear()
    screen = stage.screen(request({"compound": ["role=web and slow()"]}))
    assert screen.verdict == DEFER and Slow.ran == []  # nothing ran on this thread
    assert stage.screen(request({"compound": ["role=db and slow()"]})).verdict == NO_MATCH
    assert stage.screen(request({"compound": ["role=web or slow()"]})).verdict == MATCH
    results: list[bool] = []
    finished = threading.Event()
    assert stage.submit(request({}), screen.filter, lambda m: (results.append(m), finished.set()))
    Slow.release.set()
    assert finished.wait(5)
    assert results == [True] and Slow.ran and Slow.ran[0].startswith("filter-data")
    assert node.counters["filter_deferred"] == 1
    stage.shutdown()


def test_the_data_pool_is_bounded():
    node = Node()
    stage = Prefilter(node, data_workers=1, data_queue=1)
    Slow.release.clear()
    flt = stage.screen(request({"compound": ["slow()"]})).filter
    done = threading.Semaphore(0)
    assert stage.submit(request({}), flt, lambda m: done.release())
    assert stage.submit(request({}), flt, lambda m: done.release())
    assert not stage.submit(request({}), flt, lambda m: done.release())
    assert node.counters["filter_busy"] == 1
    Slow.release.set()
    assert done.acquire(timeout=5) and done.acquire(timeout=5)
    stage.shutdown()


def test_data_plugins_get_a_time_budget():
    node = Node()
    stage = Prefilter(node, data_seconds=0.0)
    flt = stage.screen(request({"compound": ["slow('a') and slow('b')"]})).filter
    Slow.release.set()
    results: list[bool] = []
    finished = threading.Event()
    stage.submit(request({}), flt, lambda m: (results.append(m), finished.set()))
    assert finished.wait(5) and results == [False]
    assert node.counters["filter_budget"] == 1
    stage.shutdown()


def test_the_cpu_a_data_plugin_uses_is_not_the_filters_budget():
    node = Node()
    stage = Prefilter(node)
    flt = stage.screen(request({"compound": ["busy() and role=web"]})).filter
    results: list[bool] = []
    finished = threading.Event()
    assert stage.submit(request({}), flt, lambda m: (results.append(m), finished.set()))
    assert finished.wait(10) and results == [True]
    assert node.counters["filter_budget"] == 0
    stage.shutdown()
