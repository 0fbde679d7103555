"""The name grammars: agents, actions, node identities, collectives, callers, fact names.

Every module that checks one of these names imports it from here, so the wire format
(:mod:`collective.message`), the broker destinations (:mod:`collective.connectors.destinations`),
the DDL formats (:mod:`collective.formats`), the data plugins, the DDL cache, the key store
and the plugins agree on what a name is (docs/contracts.md).

Each grammar comes three ways:

* ``AGENT`` -- the pattern text alone, without anchors, to embed in a larger pattern
  or to hand to :func:`collective.formats.regex_check`;
* ``AGENT_PATTERN`` -- ``^AGENT$``, for the envelope schemas and for error messages;
* ``AGENT_RE`` -- ``AGENT_PATTERN`` compiled (:data:`re.ASCII`). Always test a name with
  ``AGENT_RE.fullmatch(name)``: ``$`` with :meth:`re.Pattern.match` or
  :meth:`re.Pattern.search` would also accept a trailing newline.

The character classes are written out (``[a-z0-9_]``, never ``\\w``), so no non-ASCII
letter or digit is ever a name character.
"""

from __future__ import annotations

import re

__all__ = [
    "ACTION",
    "ACTION_PATTERN",
    "ACTION_RE",
    "AGENT",
    "AGENT_PATTERN",
    "AGENT_RE",
    "CALLER",
    "CALLER_PATTERN",
    "CALLER_RE",
    "COLLECTIVE",
    "COLLECTIVE_PATTERN",
    "COLLECTIVE_RE",
    "DDL_ACTION",
    "DDL_ACTION_PATTERN",
    "FACT_NAME",
    "FACT_NAME_MAX_CHARS",
    "FACT_NAME_PATTERN",
    "FACT_NAME_RE",
    "IDENTITY",
    "IDENTITY_PATTERN",
    "IDENTITY_RE",
    "anchored",
]


def anchored(text: str) -> str:
    """``^text$``: the whole-name form of a grammar (match it with ``fullmatch``)."""
    return f"^{text}$"


#: An agent name on the wire, in a destination, a policy file name, a DDL cache entry:
#: 1 to 64 lower-case letters, digits and ``_`` (MCollective's agent names).
AGENT = r"[a-z0-9_]{1,64}"
#: An action name on the wire: the agent grammar.
ACTION = AGENT
#: An action a DDL may declare (the DDL schema, ``schemas/ddl-agent-v1.json``): the wire
#: grammar without a leading ``_``, so nothing private can be declared; every declared
#: action is a valid wire name.
DDL_ACTION = r"[a-z0-9][a-z0-9_]{0,63}"
#: A node identity (the sender of a reply, ``-I`` targets, ``COLL.node.IDENTITY``, key
#: file names): a letter or digit, then up to 63 letters, digits and ``_ . -``.
IDENTITY = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
#: A collective (sub-collective) name: the identity grammar.
COLLECTIVE = IDENTITY
#: A caller id: ``KIND=NAME`` such as ``cert=alice`` or ``user=bob``.
CALLER = r"[a-z0-9]+=[A-Za-z0-9._@-]{1,128}"
#: A fact name or a dotted path into nested facts (``os.release.major``, ``interfaces.0``):
#: parts of letters, digits, ``_`` and ``-``, not starting with ``-``, joined by single dots.
#: (Filters accept any fact text, as MCollective does; this is for DDL inputs that name a
#: fact, such as ``rpcutil get_fact``.)
FACT_NAME = r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)*"
#: The longest fact name the ``fact_name`` format accepts.
FACT_NAME_MAX_CHARS = 128

AGENT_PATTERN = anchored(AGENT)
ACTION_PATTERN = anchored(ACTION)
DDL_ACTION_PATTERN = anchored(DDL_ACTION)
IDENTITY_PATTERN = anchored(IDENTITY)
COLLECTIVE_PATTERN = anchored(COLLECTIVE)
CALLER_PATTERN = anchored(CALLER)
FACT_NAME_PATTERN = anchored(FACT_NAME)

AGENT_RE = re.compile(AGENT_PATTERN, re.ASCII)
ACTION_RE = re.compile(ACTION_PATTERN, re.ASCII)
IDENTITY_RE = re.compile(IDENTITY_PATTERN, re.ASCII)
COLLECTIVE_RE = re.compile(COLLECTIVE_PATTERN, re.ASCII)
CALLER_RE = re.compile(CALLER_PATTERN, re.ASCII)
FACT_NAME_RE = re.compile(FACT_NAME_PATTERN, re.ASCII)
