"""ReplayGuard: the freshness window and the bounded replay cache (docs/security.md S2, S3)."""

from __future__ import annotations

import threading
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collective.security import ReplayGuard, SecurityError

NOW = 1_700_000_000.0
TTL, SKEW, MAX_TTL = 60, 10, 600


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ms(seconds: float) -> int:
    return int(round(seconds * 1000))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(clock) -> ReplayGuard:
    return ReplayGuard(max_entries=100, skew=SKEW, max_ttl=MAX_TTL, clock=clock)


def rid() -> str:
    return uuid.uuid4().hex


def refused(guard, t_ms, ttl=TTL, caller="cert=alice", request_id=None) -> SecurityError:
    with pytest.raises(SecurityError) as exc:
        guard.check(caller, request_id or rid(), t_ms, ttl)
    return exc.value


@pytest.mark.parametrize("t", [NOW, NOW - TTL - SKEW, NOW + SKEW, NOW + SKEW - 1, NOW - TTL,
                               NOW - TTL - SKEW + 1])
def test_accepted_inside_window(guard, t):
    guard.check("cert=alice", rid(), ms(t), TTL)


def test_expired_one_second_past_the_window(guard):
    err = refused(guard, ms(NOW - TTL - SKEW - 1))
    assert err.reason == "expired"
    assert "offset -71s" in str(err) and "clock skew?" in str(err)


def test_expired_one_millisecond_past_the_window(guard):
    assert refused(guard, ms(NOW - TTL - SKEW) - 1).reason == "expired"


def test_future_one_second_past_skew(guard):
    err = refused(guard, ms(NOW + SKEW + 1))
    assert err.reason == "future"
    assert "request time outside window (offset +11s), clock skew?" in str(err)


def test_future_one_millisecond_past_skew(guard):
    assert refused(guard, ms(NOW + SKEW) + 1).reason == "future"


def test_far_future_offset_in_message(guard):
    err = refused(guard, ms(NOW + 42))
    assert "offset +42s" in str(err)


def test_ttl_too_long(guard):
    err = refused(guard, ms(NOW), ttl=MAX_TTL + 1)
    assert err.reason == "ttl_too_long"
    guard.check("cert=alice", rid(), ms(NOW), MAX_TTL)


def test_ten_year_ttl_refused_even_when_old(guard):
    assert refused(guard, ms(NOW - 86400), ttl=10 * 365 * 86400).reason == "ttl_too_long"


@pytest.mark.parametrize(("t", "ttl"), [(1.5, TTL), (ms(NOW), 60.0), (ms(NOW), True), (ms(NOW), -1)])
def test_non_integer_or_negative_values_refused(guard, t, ttl):
    assert refused(guard, t, ttl=ttl).reason == "malformed"


def test_duplicate_is_replayed(guard, clock):
    request_id = rid()
    guard.check("cert=alice", request_id, ms(NOW), TTL)
    assert refused(guard, ms(NOW), request_id=request_id).reason == "replayed"
    clock.now += TTL  # still inside the window: still remembered
    assert refused(guard, ms(NOW), request_id=request_id).reason == "replayed"
    clock.now = NOW + TTL + SKEW + 1  # past the window: the time check refuses it
    assert refused(guard, ms(NOW), request_id=request_id).reason == "expired"


def test_same_id_from_another_caller_is_distinct(guard):
    request_id = rid()
    guard.check("cert=alice", request_id, ms(NOW), TTL)
    guard.check("cert=bob", request_id, ms(NOW), TTL)
    assert len(guard) == 2


def test_refused_requests_are_not_recorded(guard):
    request_id = rid()
    refused(guard, ms(NOW + 100), request_id=request_id)
    refused(guard, ms(NOW), ttl=MAX_TTL + 1, request_id=request_id)
    assert len(guard) == 0
    guard.check("cert=alice", request_id, ms(NOW), TTL)


def test_a_full_cache_drops_the_oldest_entry_and_refuses_what_it_forgot(clock):
    guard = ReplayGuard(max_entries=3, skew=SKEW, max_ttl=MAX_TTL, clock=clock)
    ids = [rid() for _ in range(3)]
    for n, request_id in enumerate(ids):
        guard.check("cert=alice", request_id, ms(NOW) + n, TTL)
    guard.check("cert=alice", rid(), ms(NOW) + 3, TTL)  # full: the oldest (ids[0]) goes
    assert len(guard) == 3 and guard.dropped == 1
    assert guard.floor("cert=alice") == ms(NOW)
    # the forgotten request is still refused: at or before the floor
    assert refused(guard, ms(NOW), request_id=ids[0]).reason == "replay_window"
    for n, request_id in enumerate(ids[1:], 1):
        assert refused(guard, ms(NOW) + n, request_id=request_id).reason == "replayed"
    guard.check("cert=alice", rid(), ms(NOW) + 10, TTL)  # fresh requests still run


def test_expired_entries_go_first(clock):
    guard = ReplayGuard(max_entries=3, skew=SKEW, max_ttl=MAX_TTL, clock=clock)
    guard.check("cert=alice", rid(), ms(NOW), 1)  # deadline NOW + 11
    guard.check("cert=alice", rid(), ms(NOW), TTL)
    guard.check("cert=alice", rid(), ms(NOW), TTL)
    clock.now = NOW + 1 + SKEW + 0.001  # past the short one's deadline
    guard.check("cert=alice", rid(), ms(clock.now), TTL)
    assert len(guard) == 3 and guard.dropped == 0 and guard.floor("cert=alice") is None
    clock.now = NOW + TTL + SKEW + 1  # everything from NOW expired
    guard.check("cert=alice", rid(), ms(clock.now), TTL)
    assert len(guard) == 2


def test_one_caller_cannot_lock_out_another(clock):
    """The old cache refused everyone once full (replay_cache_full); now a flood costs
    only the flooding caller's own old requests."""
    guard = ReplayGuard(max_entries=100, max_per_caller=10, skew=SKEW, max_ttl=MAX_TTL, clock=clock)
    admin_ids = [rid() for _ in range(5)]
    for request_id in admin_ids:
        guard.check("cert=admin", request_id, ms(NOW), TTL)
    for n in range(10_000):
        guard.check("cert=mallory", rid(), ms(NOW) + n, MAX_TTL)
    assert guard.held("cert=mallory") == 10 and guard.held("cert=admin") == 5
    guard.check("cert=admin", rid(), ms(NOW), TTL)  # admin is untouched
    for request_id in admin_ids:
        assert refused(guard, ms(NOW), caller="cert=admin", request_id=request_id).reason == "replayed"
    assert guard.floor("cert=admin") is None
    # mallory's own fresh requests still run; its old ones do not
    guard.check("cert=mallory", rid(), ms(NOW) + 10_000, TTL)
    assert refused(guard, ms(NOW), caller="cert=mallory").reason == "replay_window"


def test_many_callers_filling_the_cache_evict_the_heaviest(clock):
    guard = ReplayGuard(max_entries=50, max_per_caller=50, skew=SKEW, max_ttl=MAX_TTL, clock=clock)
    for n in range(20):
        guard.check("cert=admin", rid(), ms(NOW) + n, TTL)
    for caller in range(100):  # 100 keys, 5 requests each: far more than the cache holds
        for n in range(5):
            guard.check(f"cert=k{caller}", rid(), ms(NOW) + n, TTL)
    assert len(guard) == 50
    guard.check("cert=admin", rid(), ms(NOW) + 30, TTL)  # admin's fresh requests still run
    guard.check("cert=newcomer", rid(), ms(NOW), TTL)    # and so do everyone's


def test_eviction_keeps_replay_protection(clock):
    """Fill and drain the cache many times: no id is ever accepted twice while fresh."""
    guard = ReplayGuard(max_entries=50, skew=SKEW, max_ttl=MAX_TTL, clock=clock)
    accepted: list[tuple[str, str, int]] = []
    for step in range(2000):
        clock.now = NOW + step / 10
        caller = f"cert=c{step % 7 if step % 3 else 0}"
        request_id = rid()
        guard.check(caller, request_id, ms(clock.now), 5)
        accepted.append((caller, request_id, ms(clock.now)))
        for old_caller, old_id, t in accepted[-60:]:
            with pytest.raises(SecurityError) as err:
                guard.check(old_caller, old_id, t, 5)
            assert err.value.reason in ("replayed", "replay_window", "expired")
    assert len(guard) <= 50


def test_floors_survive_export_and_restore(clock):
    old = ReplayGuard(max_entries=100, max_per_caller=2, skew=SKEW, max_ttl=MAX_TTL, clock=clock)
    first = rid()
    old.check("cert=mallory", first, ms(NOW), TTL)
    old.check("cert=mallory", rid(), ms(NOW) + 1, TTL)
    old.check("cert=mallory", rid(), ms(NOW) + 2, TTL)  # drops `first`
    new = ReplayGuard(max_entries=100, max_per_caller=2, skew=SKEW, max_ttl=MAX_TTL, clock=clock)
    assert new.restore(old.export()) == 2
    assert refused(new, ms(NOW), caller="cert=mallory", request_id=first).reason == "replay_window"
    # a handover from an image without floors (3-tuples of entries only) still restores
    older = ReplayGuard(clock=clock)
    assert older.restore([("cert=a", "b" * 32, ms(NOW) + 60_000)]) == 1
    assert refused(older, ms(NOW), caller="cert=a", request_id="b" * 32).reason == "replayed"


def test_per_caller_default_is_a_tenth():
    assert ReplayGuard(max_entries=100_000).max_per_caller == 10_000
    assert ReplayGuard(max_entries=100).max_per_caller == 16
    assert ReplayGuard(max_entries=8).max_per_caller == 8


@given(offset=st.integers(min_value=-(TTL + SKEW) * 1000 - 5000, max_value=SKEW * 1000 + 5000),
       ttl=st.integers(min_value=0, max_value=MAX_TTL + 5))
@settings(max_examples=300, deadline=None)
def test_window_property(offset, ttl):
    guard = ReplayGuard(max_entries=10, skew=SKEW, max_ttl=MAX_TTL, clock=Clock())
    t = ms(NOW) + offset
    expected_ok = ttl <= MAX_TTL and ms(NOW) - (ttl + SKEW) * 1000 <= t <= ms(NOW) + SKEW * 1000
    try:
        guard.check("cert=alice", "a" * 32, t, ttl)
    except SecurityError as exc:
        assert not expected_ok, exc
        assert exc.reason in ("expired", "future", "ttl_too_long")
    else:
        assert expected_ok
        with pytest.raises(SecurityError):
            guard.check("cert=alice", "a" * 32, t, ttl)


def test_concurrent_duplicates_accepted_once(guard):
    request_id = rid()
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        try:
            guard.check("cert=alice", request_id, ms(NOW), TTL)
            results.append("ok")
        except SecurityError as exc:
            results.append(exc.reason)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["ok"] + ["replayed"] * 7


def test_defaults_use_wall_clock():
    import time

    guard = ReplayGuard()
    guard.check("cert=alice", rid(), int(time.time() * 1000), 60)
    assert (guard.max_entries, guard.skew, guard.max_ttl) == (100_000, 10, 600)


def test_invalid_parameters():
    with pytest.raises(ValueError):
        ReplayGuard(max_entries=0)
    with pytest.raises(ValueError):
        ReplayGuard(skew=-1)
    with pytest.raises(ValueError):
        ReplayGuard(max_per_caller=0)
