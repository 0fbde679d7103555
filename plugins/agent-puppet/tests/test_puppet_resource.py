"""The ``resource`` action through the real ``puppet resource``, and the ``puppet()`` and
``resource()`` data plugins reading the files of a real run."""

from __future__ import annotations

import secrets

import pytest

import collective_agent_puppet.plugin as puppet_plugin
from collective.compound import FilterSyntaxError, parse
from collective_agent_puppet.data import PuppetData, ResourceData
from collective_agent_puppet.testing import site_manifest


@pytest.fixture
def resource_node(collective_node, tmp_path, wrapper):
    """A node allowed to manage file resources (no puppetserver needed)."""
    settings = {"confdir": str(tmp_path / "puppet"), "command": str(wrapper.path),
                "resource_types": ["file"]}
    return collective_node(plugins=[puppet_plugin], config={"plugins": {"puppet": settings}})


def test_resource_creates_then_finds_no_change(resource_node, tmp_path, wrapper):
    target = tmp_path / "motd"
    reply = resource_node.call("puppet", "resource", type="file", name=str(target),
                               properties={"ensure": "file", "content": "hello from collective"})
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["changed"] is True
    assert reply.data["result"].startswith(f"/File[{target}]/ensure: defined content as '")
    assert target.read_text() == "hello from collective"
    [call] = [argv for argv in wrapper.calls() if argv[:1] == ["resource"]]
    assert call[call.index("--"):] == ["--", "file", str(target), "content=hello from collective",
                                       "ensure=file"]

    again = resource_node.call("puppet", "resource", type="FILE", name=str(target),
                               properties={"ensure": "file", "content": "hello from collective"})
    assert again.statuscode == 0, again.statusmsg
    assert again.data["changed"] is False
    assert again.data["result"].startswith(f"file {{ '{target}':")


def test_resource_without_properties_shows_the_resource(resource_node, tmp_path):
    (tmp_path / "present").write_text("x")
    reply = resource_node.call("puppet", "resource", type="file", name=str(tmp_path / "present"))
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["changed"] is False
    assert "ensure   => 'file'" in reply.data["result"]


def test_a_failing_resource_is_status_1(resource_node, tmp_path):
    target = tmp_path / "no-such-dir" / "file"
    reply = resource_node.call("puppet", "resource", type="file", name=str(target),
                               properties={"ensure": "file"})
    assert reply.statuscode == 1
    assert reply.statusmsg.startswith(f"Failed to apply File[{target}]: /File[{target}]/ensure: "
                                      "change from 'absent' to 'file' failed")
    assert not target.exists()


def test_a_type_puppet_does_not_know(collective_node, tmp_path, wrapper):
    node = collective_node(plugins=[puppet_plugin], config={"plugins": {"puppet": {
        "confdir": str(tmp_path), "command": str(wrapper.path),
        "resource_types": ["collective_nosuch"]}}})
    reply = node.call("puppet", "resource", type="collective_nosuch", name="x")
    assert reply.statuscode == 1
    assert reply.statusmsg == ("Failed to apply Collective_nosuch[x]: Could not run: Could not "
                               "find type collective_nosuch")


def test_data_plugins_and_managed_resources_after_a_real_run(managed, puppet_server, tmp_path):
    files = tmp_path / "managed"
    files.mkdir()
    node = managed(splay=False, resource_types=["file"])
    puppet_server.write_manifest(site_manifest(files, "data-" + secrets.token_hex(3),
                                               failing=(node.puppet.certname,)))
    context = node.collective.node  # what a daemon passes to data plugins
    before = PuppetData().query(None, context)
    assert before == {"applying": False, "enabled": True, "daemon_present": False,
                      "idling": False, "lastrun": 0, "since_lastrun": before["since_lastrun"],
                      "status": "stopped", "disable_message": ""}
    reply = node.call("runonce", force=True)
    assert reply.statuscode == 0, reply.statusmsg
    summary = node.puppet.wait_for_run(reply.data["initiated_at"])

    path = files / f"{node.puppet.certname}.txt"
    figures = ResourceData().query(f"file[{path}]", context)
    assert figures["managed"] is True
    assert figures["failed_resources"] == 1 and figures["changed_resources"] == 1
    assert figures["total_resources"] == summary["resources"]["total"]
    assert figures["lastrun"] == summary["time"]["last_run"]
    assert figures["config_version"] == summary["version"]["config"]
    assert ResourceData().query("file[/nonexistent]", context)["managed"] is False
    assert ResourceData().query(None, context)["managed"] is False
    after = PuppetData().query(None, context)
    assert after["lastrun"] == summary["time"]["last_run"] and after["status"] == "stopped"

    # the resource action refuses what the catalog manages, unless the node allows it
    refused = node.call("resource", type="file", name=str(path), properties={"ensure": "absent"})
    assert (refused.statuscode, refused.statusmsg) == (
        1, f"Puppet is managing the resource 'File[{path}]', refusing to create conflicting states")
    assert path.exists()


def test_data_plugin_arguments_are_checked_in_the_filter_parser():
    registry = {"puppet": PuppetData, "resource": ResourceData}
    parse("puppet().enabled=true and resource().failed_resources>0", functions=registry)
    parse("resource('file[/srv/www]').managed=true", functions=registry)
    for bad in ("puppet('x').enabled=true", "resource('file').managed=true",
                "resource('file[$(id)]').managed=true", "puppet().nosuch=1"):
        with pytest.raises(FilterSyntaxError):
            parse(bad, functions=registry)
