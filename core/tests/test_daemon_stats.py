"""``rpcutil daemon_stats`` on a real daemon: every number it returns has a label in the
DDL, and the start time is shown as a date."""

from __future__ import annotations

import re
import time
from importlib.resources import files

from collective.cli.output import node_text
from collective.ddl import AgentDDL


def test_every_daemon_stat_has_a_label_and_the_start_time_is_a_date(canary_daemons):
    start_node, client = canary_daemons
    start_node()
    with client() as c:
        [reply] = c.request("rpcutil", "daemon_stats", {}, targets=["n1"], timeout=10).replies
    outputs = AgentDDL.load(files("collective.agents.rpcutil") / "rpcutil.json") \
        .actions["daemon_stats"].outputs
    unlabelled = sorted(set(reply.data) - set(outputs))
    assert unlabelled == []  # a counter added to the daemon needs its label in the DDL
    text = node_text(reply, outputs)
    started = time.strftime("%Y-%m-%d", time.localtime(reply.data["starttime"]))
    assert re.search(rf"^ *Start Time: {started} \d\d:\d\d:\d\d [+-]\d{{4}}$", text, re.M)
    for key in ("busy", "timeouts", "denied", "filter_budget", "unverified_unaudited"):
        assert re.search(rf"^ *{re.escape(outputs[key]['display_as'])}: \d+$", text, re.M)
    assert "_" not in "".join(line.split(":")[0] for line in text.splitlines()[1:])
