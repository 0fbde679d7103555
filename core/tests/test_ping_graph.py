"""``mco ping --graph``: the sparkline of reply times."""

from __future__ import annotations

from collective.cli.basic import SPARK_TICKS, spark


def test_spark_has_one_bar_per_10_ms_from_the_fastest_to_the_slowest():
    line = spark([3.0, 4.0, 5.0, 6.0, 14.0, 31.0])
    assert len(line) == 4  # 0-9, 10-19, 20-29, 30-39 ms
    assert line[0] == SPARK_TICKS[-1]  # the most replies: the tallest bar
    assert line[2] == SPARK_TICKS[0]  # none took 20-29 ms
    assert line[1] == line[3] != SPARK_TICKS[-1]
    assert spark([]) == "" and spark([42.0]) == SPARK_TICKS[-1]
