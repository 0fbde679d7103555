"""The authorizer over real policy files: MCollective's semantics (MCollective's actionpolicy,
docs/security.md S6/S7), reloads, settings, the in-process node and the plugin contract.

The cases follow MCollective's spec fixtures example1..15 as a checklist, written
fresh; they are not copies."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

import collective_auth_actionpolicy.plugin as ap_plugin
from collective.authz import AuthzContext
from collective.config import Config, ConfigError
from collective.data import BUILTIN_DATA_PLUGINS, DataPlugin, DataResolver, instantiate
from collective.server.dispatch import NOT_AUTHORIZED, StaticNode
from collective.testing import check_plugin
from collective_auth_actionpolicy.authorizer import ActionPolicyAuthorizer, Settings, parse_bool


class PuppetData(DataPlugin):
    """A real (tiny) data plugin taking no argument, like the puppet plugin's ``puppet()``."""

    name = "puppet"
    outputs = {"enabled": "whether the agent is enabled"}
    default_output = "enabled"
    enabled = True

    def query(self, argument, node):
        return {"enabled": self.enabled}


def authorizer(tmp_path: Path, files: dict[str, str], **settings: Any) -> ActionPolicyAuthorizer:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir(exist_ok=True)
    for name, text in files.items():
        (policy_dir / name).write_text(text)
    return ActionPolicyAuthorizer(settings=Settings(policy_dir=policy_dir, **settings))


def context(caller: str = "cert=alice", agent: str = "service", action: str = "restart",
            facts: dict[str, Any] | None = None, classes: tuple[str, ...] = (),
            puppet_enabled: bool = True) -> AuthzContext:
    facts = facts or {}
    plugins = instantiate({p.name: p for p in (*BUILTIN_DATA_PLUGINS, PuppetData)})
    plugins["puppet"].enabled = puppet_enabled
    node = StaticNode("node1", Config({}, kind="server", env={}), facts=facts, classes=list(classes))
    return AuthzContext(caller=caller, agent=agent, action=action, data={}, facts=facts,
                        classes=classes, identity="node1", data_resolver=DataResolver(plugins, node))


T = "\t"
DENY_DEFAULT = "policy default deny\n"

# (name, policy text for service.policy, request overrides, allowed?)
CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("default allow only (example1)", "policy default allow\n", {}, True),
    ("default deny only", "policy default deny\n", {}, False),
    ("empty file, allow_unconfigured off", "", {}, False),
    ("comment only", "# nothing\n", {}, False),
    ("caller listed (example2)", DENY_DEFAULT + "allow\tuid=500\t*\t*\t*\n", {"caller": "uid=500"}, True),
    ("caller not listed (example2)", DENY_DEFAULT + "allow\tuid=500\t*\t*\t*\n", {"caller": "uid=501"}, False),
    ("action listed (example3)", DENY_DEFAULT + "allow\t*\tstart restart\t*\t*\n", {}, True),
    ("action not listed (example3)", DENY_DEFAULT + "allow\t*\tstart stop\t*\t*\n", {}, False),
    ("fact matches (example4)", DENY_DEFAULT + "allow\t*\t*\tfoo=bar\t*\n", {"facts": {"foo": "bar"}}, True),
    ("fact differs (example4)", DENY_DEFAULT + "allow\t*\t*\tfoo=bar\t*\n", {"facts": {"foo": "notbar"}}, False),
    ("fact missing", DENY_DEFAULT + "allow\t*\t*\tfoo=bar\t*\n", {}, False),
    ("class present (example5)", DENY_DEFAULT + "allow\t*\t*\t*\trspec\n", {"classes": ("rspec",)}, True),
    ("class absent (example5)", DENY_DEFAULT + "allow\t*\t*\t*\trspec\n", {"classes": ("other",)}, False),
    ("all classes needed", DENY_DEFAULT + "allow\t*\t*\t*\tone two\n", {"classes": ("one",)}, False),
    ("class regex", DENY_DEFAULT + "allow\t*\t*\t*\t/^role::/\n", {"classes": ("role::web",)}, True),
    ("caller+action+fact+class (example9/10)",
     DENY_DEFAULT + "allow\tuid=500\trestart\tfoo=bar\trspec\n",
     {"caller": "uid=500", "facts": {"foo": "bar"}, "classes": ("rspec",)}, True),
    ("one field off (example9/10)",
     DENY_DEFAULT + "allow\tuid=500\trestart\tfoo=bar\trspec\n",
     {"caller": "uid=500", "facts": {"foo": "bar"}, "classes": ()}, False),
    ("compound facts with classes field (example12)",
     DENY_DEFAULT + "allow\tuid=500\trestart\tfoo=bar and bar=foo\trspec\n",
     {"caller": "uid=500", "facts": {"foo": "bar", "bar": "foo"}, "classes": ("rspec",)}, True),
    ("compound classes field (example13)",
     DENY_DEFAULT + "allow\tuid=500\trestart\tfoo=bar\tone and two or three\n",
     {"caller": "uid=500", "facts": {"foo": "bar"}, "classes": ("one", "two")}, True),
    ("4-field compound (example14)",
     DENY_DEFAULT + "allow\t\tuid=500\t\trestart\t\tfoo=bar and one or (two and one)\n",
     {"caller": "uid=500", "facts": {"foo": "bar"}, "classes": ("one",)}, True),
    ("4-field compound false (example14)",
     DENY_DEFAULT + "allow\tuid=500\trestart\tfoo=bar and one or (two and one)\n",
     {"caller": "uid=500", "facts": {"foo": "baz"}, "classes": ("two",)}, False),
    ("4-field with data plugin, empty parens (example15)",
     DENY_DEFAULT + "allow\tuid=700\trestart\t(puppet().enabled=false and environment=production) "
                    "or environment=development\n",
     {"caller": "uid=700", "facts": {"environment": "production"}, "puppet_enabled": False}, True),
    ("4-field with data plugin false (example15)",
     DENY_DEFAULT + "allow\tuid=700\trestart\t(puppet().enabled=false and environment=production) "
                    "or environment=development\n",
     {"caller": "uid=700", "facts": {"environment": "production"}, "puppet_enabled": True}, False),
    ("5-field empty-paren call detected as compound",
     DENY_DEFAULT + "allow\t*\t*\tpuppet().enabled=false\t*\n", {"puppet_enabled": False}, True),
    # first match wins
    ("deny before allow", "policy default allow\ndeny\tcert=alice\t*\t*\t*\nallow\t*\t*\t*\t*\n", {}, False),
    ("allow before deny", DENY_DEFAULT + "allow\tcert=alice\t*\t*\t*\ndeny\t*\t*\t*\t*\n", {}, True),
    ("explicit deny beats default allow", "policy default allow\ndeny\t*\trestart\t*\t*\n", {}, False),
    ("default can come last", "allow\tcert=bob\t*\t*\t*\npolicy default allow\n", {}, True),
    ("last default wins", "policy default allow\npolicy default deny\n", {}, False),
    ("default word other than allow denies", "policy default yes\n", {}, False),
    # exact tokens, not substrings (MCollective's bug)
    ("cert=alice vs rule cert=alice-admin", DENY_DEFAULT + "allow\tcert=alice-admin\t*\t*\t*\n", {}, False),
    ("cert=alice-admin itself", DENY_DEFAULT + "allow\tcert=alice-admin\t*\t*\t*\n",
     {"caller": "cert=alice-admin"}, True),
    ("cert=alice2 vs rule cert=alice", DENY_DEFAULT + "allow\tcert=alice\t*\t*\t*\n", {"caller": "cert=alice2"}, False),
    ("cert=alice among several", DENY_DEFAULT + "allow\tcert=bob cert=alice\t*\t*\t*\n", {}, True),
    # regex callers
    ("regex caller", DENY_DEFAULT + "allow\t/^cert=sre-/\t*\t*\t*\n", {"caller": "cert=sre-jo"}, True),
    ("regex caller no match", DENY_DEFAULT + "allow\t/^cert=sre-/\t*\t*\t*\n", {"caller": "cert=dev-jo"}, False),
    # typed fact comparisons, same as -F
    ("cpus>=4 numeric (16)", DENY_DEFAULT + "allow\t*\t*\tcpus>=4\t*\n", {"facts": {"cpus": 16}}, True),
    ("cpus>=4 numeric (3)", DENY_DEFAULT + "allow\t*\t*\tcpus>=4\t*\n", {"facts": {"cpus": 3}}, False),
    ("cpus>=4 numeric string fact", DENY_DEFAULT + "allow\t*\t*\tcpus>=4\t*\n", {"facts": {"cpus": "10"}}, True),
    ("several pairs all must match", DENY_DEFAULT + "allow\t*\t*\tcpus>=4 os.family=debian\t*\n",
     {"facts": {"cpus": 8, "os": {"family": "redhat"}}}, False),
    ("dotted fact path", DENY_DEFAULT + "allow\t*\t*\tos.family=debian\t*\n",
     {"facts": {"os": {"family": "debian"}}}, True),
    ("regex fact", DENY_DEFAULT + "allow\t*\t*\thostname=/^web/\t*\n", {"facts": {"hostname": "web-1"}}, True),
    ("list fact any element", DENY_DEFAULT + "allow\t*\t*\tinterfaces=eth0\t*\n",
     {"facts": {"interfaces": ["lo", "eth0"]}}, True),
    ("no default line: allow_unconfigured off", "allow\tcert=bob\t*\t*\t*\n", {}, False),
]


@pytest.mark.parametrize(("policy", "overrides", "allowed"),
                         [pytest.param(p, o, a, id=n) for n, p, o, a in CASES])
def test_policy_semantics(tmp_path, policy, overrides, allowed):
    authz = authorizer(tmp_path, {"service.policy": policy})
    decision = authz.authorize(context(**overrides))
    assert decision.allowed is allowed, decision.reason


def test_no_default_line_falls_back_to_allow_unconfigured(tmp_path):
    authz = authorizer(tmp_path, {"service.policy": "allow\tcert=bob\t*\t*\t*\n"},
                       allow_unconfigured=True)
    decision = authz.authorize(context())
    assert decision.allowed and "allow_unconfigured is true" in decision.reason


def test_missing_file_denies_by_default_with_mcollective_message(tmp_path):
    decision = authorizer(tmp_path, {}).authorize(context())
    assert not decision.allowed
    assert decision.reason.startswith("Could not load any valid policy files. Denying based on "
                                      "allow_unconfigured: false")


def test_missing_file_allow_unconfigured(tmp_path):
    assert authorizer(tmp_path, {}, allow_unconfigured=True).authorize(context()).allowed


@pytest.mark.parametrize(("files", "enable_default", "allow_unconfigured", "allowed"), [
    ({"default.policy": "policy default allow\n"}, True, False, True),
    ({"default.policy": "policy default deny\n"}, True, True, False),   # enable_default wins
    ({"default.policy": "policy default allow\n"}, False, False, False),  # default file ignored
    ({}, True, True, True),                                               # no default file
    ({"default.policy": "policy default allow\n", "service.policy": "policy default deny\n"},
     True, True, False),                                                  # agent file first
])
def test_enable_default_precedence(tmp_path, files, enable_default, allow_unconfigured, allowed):
    authz = authorizer(tmp_path, files, enable_default=enable_default,
                       allow_unconfigured=allow_unconfigured)
    assert authz.authorize(context()).allowed is allowed


def test_default_name(tmp_path):
    authz = authorizer(tmp_path, {"site.policy": "policy default allow\n"}, enable_default=True,
                       default_name="site")
    assert authz.authorize(context()).allowed


GROUPS = "webteam cert=alice cert=bob\nops cert=carol\n"


@pytest.mark.parametrize(("caller", "allowed"), [
    ("cert=alice", True), ("cert=carol", True), ("cert=dave", False), ("cert=alic", False),
])
def test_groups(tmp_path, caller, allowed):
    authz = authorizer(tmp_path, {"groups": GROUPS,
                                  "service.policy": DENY_DEFAULT + "allow\twebteam ops\t*\t*\t*\n"})
    assert authz.authorize(context(caller=caller)).allowed is allowed


def test_unknown_group_matches_nobody(tmp_path):
    authz = authorizer(tmp_path, {"groups": GROUPS,
                                  "service.policy": DENY_DEFAULT + "allow\tnosuch\t*\t*\t*\n"})
    assert not authz.authorize(context()).allowed


def test_broken_groups_file_fails_closed(tmp_path):
    authz = authorizer(tmp_path, {
        "groups": "bad/name cert=alice\n",
        "service.policy": "policy default allow\ndeny\twebteam\t*\t*\t*\n"})
    decision = authz.authorize(context())
    assert not decision.allowed and "fail closed" in decision.reason


def test_facts_come_from_the_node_not_the_request(tmp_path):
    """S7a: the request filter never reaches the authorizer; only node facts count."""
    authz = authorizer(tmp_path, {"service.policy": DENY_DEFAULT + "allow\t*\t*\trole=db\t*\n"})
    ctx = context(facts={"role": "web"})
    ctx = AuthzContext(**{**ctx.__dict__, "data": {"filter": "role=db or true"}})
    assert not authz.authorize(ctx).allowed
    assert authz.authorize(context(facts={"role": "db"})).allowed


def test_data_plugin_fstat_in_four_field_line(tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("x")
    policy = DENY_DEFAULT + f'allow\t*\t*\tfstat("{marker}").size>0 and role=web\n'
    authz = authorizer(tmp_path, {"service.policy": policy})
    assert authz.authorize(context(facts={"role": "web"})).allowed
    marker.write_text("")
    assert not authz.authorize(context(facts={"role": "web"})).allowed


def test_unanswerable_data_plugin_fails_closed(tmp_path):
    policy = ("policy default allow\n"
              "deny\t*\t*\tnosuch('x').value=1\n")
    authz = authorizer(tmp_path, {"service.policy": policy})
    decision = authz.authorize(context())
    assert not decision.allowed and "fail closed" in decision.reason
    allow = authorizer(tmp_path, {"service.policy": DENY_DEFAULT + "allow\t*\t*\tnot nosuch('x')\n"})
    assert not allow.authorize(context()).allowed


def test_decision_names_the_rule_and_reason(tmp_path):
    authz = authorizer(tmp_path, {"service.policy": DENY_DEFAULT + "allow\tcert=bob\tstatus\t*\t*\n"
                                                                   "deny\tcert=alice\t*\t*\t*\n"})
    decision = authz.authorize(context())
    path = tmp_path / "policies" / "service.policy"
    assert decision.rule == f"{path}:3: deny\tcert=alice\t*\t*\t*"
    assert "deny rule at line 3" in decision.reason
    default = authz.authorize(context(caller="cert=carol"))
    assert default.rule == f"{path}:1: policy default deny"
    assert default.reason.startswith("no rule matched; policy default deny at line 1")


@pytest.mark.parametrize("agent", ["../etc/passwd", "..", "Service", "a/b", "", "x" * 65, "a.b"])
def test_agent_names_are_validated_before_any_path(tmp_path, agent):
    authz = authorizer(tmp_path, {"service.policy": "policy default allow\n"},
                       allow_unconfigured=True)
    decision = authz.authorize(context(agent=agent))
    assert not decision.allowed and "not valid" in decision.reason


# -- reloads -----------------------------------------------------------------------------------

def rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()   # make sure the change is visible even on coarse-mtime filesystems
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_policy_reloads_when_the_file_changes(tmp_path):
    authz = authorizer(tmp_path, {"service.policy": "policy default allow\n"})
    path = tmp_path / "policies" / "service.policy"
    assert authz.authorize(context()).allowed
    rewrite(path, "policy default deny\n")
    assert not authz.authorize(context()).allowed
    rewrite(path, "policy default allow\n")
    assert authz.authorize(context()).allowed
    path.unlink()
    assert not authz.authorize(context()).allowed


def test_groups_reload_when_the_file_changes(tmp_path):
    authz = authorizer(tmp_path, {"groups": "team cert=bob\n",
                                  "service.policy": DENY_DEFAULT + "allow\tteam\t*\t*\t*\n"})
    assert not authz.authorize(context()).allowed
    rewrite(tmp_path / "policies" / "groups", "team cert=bob cert=alice\n")
    assert authz.authorize(context()).allowed


def test_broken_change_keeps_the_last_good_policy_and_logs_location(tmp_path, caplog):
    authz = authorizer(tmp_path, {"service.policy": DENY_DEFAULT + "allow\tcert=alice\t*\t*\t*\n"})
    path = tmp_path / "policies" / "service.policy"
    assert authz.authorize(context()).allowed
    with caplog.at_level(logging.ERROR):
        rewrite(path, "policy default allow\nallow cert=bob\t*\t*\t*\n")
        assert authz.authorize(context()).allowed            # last good version
        assert not authz.authorize(context(caller="cert=bob")).allowed
    assert f"{path}:2:6:" in caplog.text and "keeping its last good version" in caplog.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "an unchanged broken file is logged once"
    authz.reload()                                           # SIGHUP keeps the last good too
    assert authz.authorize(context()).allowed
    rewrite(path, "policy default deny\n")                   # fixed: new version in force
    assert not authz.authorize(context()).allowed


def test_a_file_that_never_parsed_denies(tmp_path, caplog):
    authz = authorizer(tmp_path, {"service.policy": "policy default allow\nallow cert=x\t*\t*\t*\n"},
                       allow_unconfigured=True)
    decision = authz.authorize(context())
    assert not decision.allowed
    assert "never loaded" in decision.reason and ":2:6:" in decision.reason
    assert decision.rule.endswith("service.policy:2:6")


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_a_policy_file_others_may_write_is_refused(tmp_path, mode):
    authz = authorizer(tmp_path, {"service.policy": "policy default allow\n"})
    path = tmp_path / "policies" / "service.policy"
    os.chmod(path, mode)
    decision = authz.authorize(context())
    assert not decision.allowed
    assert f"policy file {path} has mode {mode:04o}" in decision.reason
    os.chmod(path, 0o644)
    assert authz.authorize(context()).allowed


def test_a_policy_file_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("changing a file's owner needs root (the tests run as root in CI)")
    authz = authorizer(tmp_path, {"service.policy": "policy default allow\n"})
    path = tmp_path / "policies" / "service.policy"
    os.chown(path, 65534, 65534)
    decision = authz.authorize(context())
    assert not decision.allowed and "is owned by uid 65534" in decision.reason


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_policy_directory_others_may_write_denies_everything(tmp_path, mode, caplog):
    authz = authorizer(tmp_path, {"service.policy": "policy default allow\n"})
    os.chmod(tmp_path / "policies", mode)
    try:
        decision = authz.authorize(context())
    finally:
        os.chmod(tmp_path / "policies", 0o755)
    assert not decision.allowed
    assert decision.reason.startswith(f"policy directory refused: policy directory "
                                      f"{tmp_path / 'policies'} has mode {mode:04o}")
    assert "every request is denied" in caplog.text
    assert authz.authorize(context()).allowed


def test_reload_forces_a_reread(tmp_path):
    authz = authorizer(tmp_path, {"service.policy": "policy default allow\n"})
    assert authz.authorize(context()).allowed
    authz.reload()
    assert authz.authorize(context()).allowed


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), (1, True), (0, False), ("1", True), ("y", True), ("yes", True),
    ("YES", True), ("true", True), ("0", False), ("n", False), ("no", False), ("false", False),
])
def test_parse_bool(value, expected):
    assert parse_bool(value, "allow_unconfigured") is expected


@pytest.mark.parametrize("value", ["dryrun", "maybe", "nay", "2", 2, None, [], "yesplease"])
def test_parse_bool_refuses_the_anything_with_a_y_bug(value):
    with pytest.raises(ConfigError, match="plugins.actionpolicy.allow_unconfigured"):
        parse_bool(value, "allow_unconfigured")


def test_settings_from_config(tmp_path):
    config_file = tmp_path / "server.yaml"
    config_file.write_text("identity: n1\n")
    config = Config({"plugins": {"actionpolicy": {"allow_unconfigured": "y",
                                                  "enable_default": True}}},
                    path=config_file, kind="server", env={})
    settings = Settings.from_config(config)
    assert settings.policy_dir == tmp_path / "policies"   # next to the config file
    assert settings.allow_unconfigured and settings.enable_default
    assert settings.default_name == "default"
    relative = Config({"plugins": {"actionpolicy": {"policy_dir": "pol"}}}, path=config_file,
                      kind="server", env={})
    assert Settings.from_config(relative).policy_dir == tmp_path / "pol"
    for bad in ({"allow_unconfigued": True}, {"default_name": "../x"},
                {"enable_default": "sometimes"}):
        with pytest.raises(ConfigError):
            Settings.from_config(Config({"plugins": {"actionpolicy": bad}}, kind="server", env={}))


# -- the in-process node and the plugin contract ----------------------------------------------

def test_collective_node_with_the_authorizer(collective_node, tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    marker = tmp_path / "ready"
    marker.write_text("yes")
    (policies / "rpcutil.policy").write_text(
        "policy default deny\n"
        "allow\tcert=admin\t*\t*\t*\n"
        "allow\tcert=bob\tping\t*\t*\n"
        f'allow\tcert=bob\tget_fact\tfstat("{marker}").size>0 and role=db\n')
    config = {"authorization": {"provider": "actionpolicy"},
              "plugins": {"actionpolicy": {"policy_dir": str(policies)}},
              "facts": {"static": {"role": "db"}}}
    admin = collective_node(plugins=[ap_plugin], config=config, caller="cert=admin")
    assert admin.call("rpcutil", "inventory").statuscode == 0
    bob = collective_node(plugins=[ap_plugin], config=config, caller="cert=bob")
    denied = bob.call("rpcutil", "inventory")
    assert (denied.statuscode, denied.statusmsg, denied.decision) == (1, NOT_AUTHORIZED, "deny")
    assert "rpcutil.policy:1: policy default deny" in denied.reason
    assert bob.call("rpcutil", "ping").statuscode == 0
    assert bob.call("rpcutil", "get_fact", fact="role").statuscode == 0   # fstat via the host
    marker.write_text("")
    assert bob.call("rpcutil", "get_fact", fact="role").statuscode == 1


def test_plugin_contract():
    check_plugin(ap_plugin)


def test_plugin_module_is_cheap_to_import():
    import subprocess
    import sys

    code = ("import sys, collective_auth_actionpolicy.plugin; "
            "heavy = [m for m in sys.modules if m.startswith('collective_auth_actionpolicy.') "
            "and m != 'collective_auth_actionpolicy.plugin']; "
            "sys.exit(1 if heavy or 'collective.compound' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_registered_under_its_name():
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager(load_entrypoints=False, plugins=[ap_plugin])
    assert pm.authorizers()["actionpolicy"] is ActionPolicyAuthorizer
