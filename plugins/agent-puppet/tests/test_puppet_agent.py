"""The puppet agent in-process against the real puppet 7 agent and the session's private
puppetserver: runs really fetch and apply the catalog this module writes, and status,
enable, disable and last_run_summary read and write the agent's real files."""

from __future__ import annotations

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from collective_agent_puppet.testing import site_manifest


@pytest.fixture
def catalog(puppet_server, tmp_path):
    """Writes a site.pp for this test; returns (files directory, token, write function)."""
    files = tmp_path / "managed"
    files.mkdir()
    token = "collective-" + secrets.token_hex(4)

    def write(failing: tuple[str, ...] = ()) -> None:
        puppet_server.write_manifest(site_manifest(files, token, failing))

    write()
    return files, token, write


def wait_for_status(node, predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        reply = node.call("status")
        assert reply.statuscode == 0, reply.statusmsg
        if predicate(reply.data):
            return reply.data
        assert time.monotonic() < deadline, f"status never matched: {reply.data}"
        time.sleep(0.2)


def test_status_of_a_node_that_never_ran(managed):
    node = managed()
    reply = node.call("status")
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["applying"] is False and reply.data["enabled"] is True
    assert reply.data["daemon_present"] is False and reply.data["idling"] is False
    assert reply.data["status"] == "stopped" and reply.data["lastrun"] == 0
    assert reply.data["message"] == "Currently stopped; no completed run yet"
    summary = node.call("last_run_summary")
    assert summary.statuscode == 0, summary.statusmsg
    assert summary.data["total_resources"] == 0 and summary.data["lastrun"] == 0
    assert summary.data["type_distribution"] == {} and summary.data["logs"] == []


def test_runonce_applies_the_catalog_and_refuses_a_second_run(managed, catalog, wrapper):
    files, token, write = catalog
    write(failing=())
    node = managed(splay=False)
    node.call("status")  # the first action looks the paths up; keep it out of the race
    before = int(time.time())
    # two requests at once on two worker threads: one starts a run, the other is refused
    with ThreadPoolExecutor(2) as pool:
        replies = sorted(pool.map(lambda _: node.call("runonce"), range(2)),
                         key=lambda r: r.statuscode)
    reply, second = replies
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["summary"].startswith("Started a Puppet run using the '")
    assert "--onetime --no-daemonize" in reply.data["summary"]
    assert reply.data["initiated_at"] >= before
    assert second.statuscode == 1
    assert second.statusmsg == "Puppet is currently applying a catalog, cannot run now"
    # and a third one while it runs
    third = node.call("runonce")
    assert (third.statuscode, third.statusmsg) == (1, second.statusmsg)
    assert wait_for_status(node, lambda s: s["applying"])["status"] == "applying a catalog"
    done = node.puppet.wait_for_run(reply.data["initiated_at"])
    assert (files / f"{node.puppet.certname}.txt").read_text() == f"{token} {node.puppet.certname}\n"
    assert done["resources"]["failed"] == 0 and done["resources"]["changed"] == 1
    # only one run was started through puppet (plus the config lookup)
    runs = [argv for argv in wrapper.calls() if argv[:1] == ["agent"] and "--onetime" in argv]
    assert len(runs) == 1
    assert runs[0][-2:] == ["--runtimeout=3600", "--no-splay"]
    status = wait_for_status(node, lambda s: not s["applying"])
    assert status["status"] == "stopped" and status["lastrun"] == done["time"]["last_run"]
    assert status["message"].startswith("Currently stopped; last completed run ")

    summary = node.call("last_run_summary", logs=True)
    assert summary.statuscode == 0, summary.statusmsg
    data = summary.data
    assert data["changed_resources"] == 1 and data["failed_resources"] == 0
    assert data["total_resources"] == done["resources"]["total"]
    assert data["lastrun"] == done["time"]["last_run"]
    assert data["config_version"] == done["version"]["config"]
    assert data["type_distribution"]["File"] >= 1
    assert data["summary"]["events"] == done["events"]
    changes = [line for line in data["logs"]
               if line["source"].endswith(f"{node.puppet.certname}.txt]/ensure")]
    assert [line["msg"][:20] for line in changes] == ["defined content as '"], data["logs"]
    assert changes[0]["level"] == "notice" and changes[0]["time"] >= reply.data["initiated_at"]
    assert all(set(line) == {"time", "time_utc", "level", "source", "msg"} for line in data["logs"])
    without = node.call("last_run_summary")
    assert without.data["logs"] == []


def test_a_failing_resource_shows_in_last_run_summary(managed, catalog):
    files, token, write = catalog
    node = managed(splay=False)
    write(failing=(node.puppet.certname,))
    reply = node.call("runonce", force=True)
    assert reply.statuscode == 0, reply.statusmsg
    node.puppet.wait_for_run(reply.data["initiated_at"])
    data = node.call("last_run_summary").data
    assert data["failed_resources"] == 1
    assert data["changed_resources"] == 1  # the file resource still applied
    assert data["type_distribution"] == {"File": 1, "Exec": 1}
    assert (files / f"{node.puppet.certname}.txt").exists()


def test_disable_and_enable_through_the_real_agent(managed, catalog):
    node = managed(splay=False)
    reply = node.call("disable", message="maintenance by the test")
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data == {"enabled": False,
                          "status": "Successfully locked the Puppet agent: maintenance by the test"}
    assert json.loads(node.puppet.disabled_lock.read_text()) == {
        "disabled_message": "maintenance by the test"}
    status = node.call("status").data
    assert (status["enabled"], status["status"]) == (False, "disabled")
    assert status["disable_message"] == "maintenance by the test"
    assert status["message"].startswith("Currently disabled;")

    again = node.call("disable", message="other")
    assert again.statuscode == 1 and again.statusmsg == "Could not disable Puppet: Already disabled"
    refused = node.call("runonce")
    assert refused.statuscode == 1
    assert refused.statusmsg == "Puppet is disabled: 'maintenance by the test'"
    assert node.puppet.puppet_pids() == []
    # the real agent refuses to run too, and records no run
    direct = node.puppet.run_agent()
    assert "administratively disabled (Reason: 'maintenance by the test')" in direct.stdout
    assert node.puppet.lastrun() == 0

    reply = node.call("enable")
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data == {"enabled": True, "status": "Successfully enabled the Puppet agent"}
    assert not node.puppet.disabled_lock.exists()
    again = node.call("enable")
    assert again.statuscode == 1 and again.statusmsg == "Could not enable Puppet: Already enabled"
    started = int(time.time())
    direct = node.puppet.run_agent()
    assert direct.returncode == 2, direct.stdout  # --detailed-exitcodes: changes applied
    assert node.puppet.lastrun() >= started


def test_default_disable_message_names_the_caller(managed):
    node = managed()
    reply = node.call("disable")
    assert reply.statuscode == 0, reply.statusmsg
    message = json.loads(node.puppet.disabled_lock.read_text())["disabled_message"]
    assert message.startswith("Disabled via collective by cert=tester at ")
    assert node.call("runonce").statusmsg == f"Puppet is disabled: '{message}'"


def test_runonce_options_reach_puppet(managed, catalog, wrapper):
    files, token, write = catalog
    node = managed(splay=True, splaylimit=1)
    # "file" is a tag every file resource has: the run still covers the catalog's file
    reply = node.call("runonce", noop=True, tags="file,other::tag", environment="production",
                      use_cached_catalog=False, force=True)
    assert reply.statuscode == 0, reply.statusmsg
    node.puppet.wait_for_run(reply.data["initiated_at"])
    [run] = [argv for argv in wrapper.calls() if "--onetime" in argv]
    assert run[run.index("--runtimeout=3600") + 1:] == [
        "--no-splay", "--noop", "--tags=file,other::tag", "--environment=production",
        "--no-use_cached_catalog"]
    # noop: the file is out of sync but was not changed
    summary = node.call("last_run_summary").data
    assert (summary["out_of_sync_resources"], summary["changed_resources"]) == (1, 0)
    assert not (files / f"{node.puppet.certname}.txt").exists()


def test_node_splay_defaults_apply_without_force(managed, catalog, wrapper):
    node = managed(splay=True, splaylimit=1)
    reply = node.call("runonce")
    assert reply.statuscode == 0, reply.statusmsg
    # the wrapper logs the argv as puppet starts; the run itself is killed at teardown
    deadline = time.monotonic() + 30
    while not (runs := [argv for argv in wrapper.calls() if "--onetime" in argv]):
        assert time.monotonic() < deadline, wrapper.calls()
        time.sleep(0.05)
    assert runs[0][-2:] == ["--splay", "--splaylimit=1"]


def test_server_override_is_refused_unless_allowed(managed, catalog, wrapper):
    node = managed(splay=False)
    reply = node.call("runonce", server=f"localhost:{node.puppet.port}")
    assert reply.statuscode == 1
    assert reply.statusmsg == "Passing 'server' option is not allowed in module configuration"
    assert wrapper.calls() == []  # refused before any puppet command


def test_server_override_where_allowed_really_uses_that_server(managed, catalog, puppet_server):
    files, token, _ = catalog
    node = managed(splay=False, allow_server_override=True)
    # the node's own puppet.conf points at a port nothing listens on
    from collective.testing.processes import free_port

    node.puppet.write_conf(port=free_port())
    reply = node.call("runonce", server=f"localhost:{puppet_server.port}")
    assert reply.statuscode == 0, reply.statusmsg
    assert f"--server=localhost --serverport={puppet_server.port}" in reply.data["summary"]
    node.puppet.wait_for_run(reply.data["initiated_at"])
    assert (files / f"{node.puppet.certname}.txt").read_text() == f"{token} {node.puppet.certname}\n"


def test_an_idle_daemon_is_signalled(managed, catalog):
    node = managed(splay=False)
    daemon = node.puppet.start_daemon()
    try:
        # the daemon runs once when it starts, then idles
        first = node.puppet.wait_for_run(1)["time"]["last_run"]
        status = wait_for_status(node, lambda s: s["idling"])
        assert (status["daemon_present"], status["status"]) == (True, "idling")
        assert int(node.puppet.pidfile.read_text()) == daemon.pid
        reply = node.call("runonce")
        assert reply.statuscode == 0, reply.statusmsg
        assert reply.data["summary"] == "Signalled the running Puppet Daemon"
        node.puppet.wait_for_run(max(first + 1, reply.data["initiated_at"]))
        assert daemon.poll() is None
        # options a signalled daemon cannot honour start a separate run instead
        reply = node.call("runonce", noop=True)
        assert reply.statuscode == 0, reply.statusmsg
        assert reply.data["summary"].startswith("Started a Puppet run using the '")
        node.puppet.wait_for_run(reply.data["initiated_at"])
    finally:
        node.puppet.stop_daemon(daemon)
    status = node.call("status").data
    assert status["daemon_present"] is False and status["status"] == "stopped"


def test_a_run_that_outlives_its_bound_is_killed(managed, puppet_server, monkeypatch, caplog):
    """The watchdog kills a started run's process group once it outlives run_timeout
    (+ splay + a grace period). The grace is made negative here (watchdog after 20 - 5 =
    15 s) so that it acts before puppet's own --runtimeout (20 s) would."""
    import collective_agent_puppet.agent as agent_module

    monkeypatch.setattr(agent_module, "RUN_GRACE", -5)
    seconds = f"{300 + secrets.randbelow(100)}.{secrets.randbelow(1000):03d}"
    puppet_server.write_manifest(
        "node default {\n"
        f"  exec {{ 'collective-test-sleep': command => '/bin/sleep {seconds}', timeout => 0 }}\n"
        "}\n")
    node = managed(splay=False, run_timeout=20)
    started = time.monotonic()
    reply = node.call("runonce")
    assert reply.statuscode == 0, reply.statusmsg
    sleeper = None
    while time.monotonic() - started < 60:
        sleeper = sleeper or _find(["/bin/sleep", seconds])
        if sleeper and not node.puppet.puppet_pids() and not _alive(sleeper):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the run was not stopped: puppet {node.puppet.puppet_pids()}, sleep {sleeper}")
    took = time.monotonic() - started
    assert sleeper is not None, "the catalog's exec never started"
    assert 14 < took < 20, took
    assert "still running after 15s; killing it" in caplog.text
    assert node.call("status").data["applying"] is False


def _find(argv):
    wanted = [part.encode() for part in argv]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().split(b"\0")[:len(wanted)] == wanted:
                        return int(entry)
            except OSError:
                continue
    return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead
        return handle.read().split(") ", 1)[1][0] != "Z"
