"""What agent authors subclass and raise: :class:`Agent`, :func:`action`, the
request and reply objects, and the exceptions that become reply status codes.

Only methods marked :func:`action` can be dispatched; the marks form an
allow-list, so helpers, dunders and ``_private`` methods are never remotely
callable (MCollective dispatched with ``send("#{action}_action")``, Salt
CVE-2020-11651 dispatched by name; see docs/security.md S6).

Status codes (MCollective ``simplerpc/clients.md``, Choria ``mcorpc.go``)::

    0 OK   1 Aborted   2 UnknownAction   3 MissingData   4 InvalidData   5 UnknownError
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .ddl import AgentDDL, RequestError

if TYPE_CHECKING:  # pragma: no cover - types only
    from .config import Config

__all__ = [
    "ACTION_MARK",
    "Aborted",
    "Agent",
    "InvalidData",
    "MissingData",
    "RPCError",
    "Reply",
    "Request",
    "RequestError",
    "UnknownAction",
    "UnknownError",
    "action",
    "check_agent",
]

#: The attribute :func:`action` sets on a function.
ACTION_MARK = "__collective_action__"

F = TypeVar("F", bound=Callable[..., Any])


def action(func: F) -> F:
    """Mark ``func`` as a remotely callable action; it only sets an attribute.

    The method is called as ``func(self, request, reply)`` and its name must be
    an action of the agent's DDL.
    """
    setattr(func, ACTION_MARK, True)
    return func


# -- errors --------------------------------------------------------------------


class RPCError(Exception):
    """An error that becomes a reply with ``statuscode`` and the message as ``statusmsg``.

    :param message: the status message the caller sees
    :param statuscode: 1-5; subclasses fix it
    """

    #: the status code when none is given
    default_statuscode: ClassVar[int] = 5

    def __init__(self, message: str = "", statuscode: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        code = self.default_statuscode if statuscode is None else statuscode
        # 0 would claim success and anything above 5 means nothing to clients.
        self.statuscode = code if isinstance(code, int) and 1 <= code <= 5 else 5

    def __str__(self) -> str:
        return self.message


class Aborted(RPCError):
    """The action ran but could not do what was asked (status 1, "Request Aborted")."""

    default_statuscode = 1


class UnknownAction(RPCError):
    """No such action (status 2)."""

    default_statuscode = 2


class MissingData(RPCError):
    """A required input is missing (status 3)."""

    default_statuscode = 3


class InvalidData(RPCError):
    """An input is invalid (status 4)."""

    default_statuscode = 4


class UnknownError(RPCError):
    """Anything else (status 5)."""

    default_statuscode = 5


# -- request and reply --------------------------------------------------------------


class Request(Mapping[str, Any]):
    """The validated request data (read-only) and who sent it.

    ``request["service"]`` reads an input; declared defaults are already filled in.
    """

    def __init__(self, data: Mapping[str, Any], *, id: str = "", caller: str = "", sender: str = "",
                 agent: str = "", action: str = "", collective: str = "", time: int = 0) -> None:
        self._data = MappingProxyType(dict(data))
        #: the request id (uuid4 hex)
        self.id = id
        #: the verified caller, e.g. ``cert=alice``
        self.caller = caller
        #: the client host the request came from
        self.sender = sender
        self.agent = agent
        self.action = action
        self.collective = collective
        #: when the client sent it, unix milliseconds
        self.time = time

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def data(self) -> Mapping[str, Any]:
        """The request data as a read-only mapping."""
        return self._data

    def __repr__(self) -> str:
        return f"Request({self.agent}#{self.action} id={self.id} caller={self.caller})"


class Reply(MutableMapping[str, Any]):
    """The reply data, prefilled with every declared output's default.

    ``reply["status"] = "running"`` sets an output. :meth:`fail` sets the status and
    lets the action continue; to stop at once, raise :class:`Aborted` (or another
    :class:`RPCError`).
    """

    def __init__(self, defaults: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = copy.deepcopy(dict(defaults or {}))
        #: 0 unless :meth:`fail` was called
        self.statuscode = 0
        self.statusmsg = "OK"

    def fail(self, message: str, code: int = 1) -> None:
        """Mark the reply failed with ``code`` (default 1, aborted) and keep going."""
        self.statuscode = code if isinstance(code, int) and 1 <= code <= 5 else 5
        self.statusmsg = str(message)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def data(self) -> dict[str, Any]:
        """The reply data (the live dict)."""
        return self._data

    def __repr__(self) -> str:
        return f"Reply(statuscode={self.statuscode}, data={self._data!r})"


# -- agents --------------------------------------------------------------------------


class Agent:
    """Base class of agents.

    Subclasses set :attr:`name`, mark actions with :func:`action` and ship a DDL
    with the same name. The daemon constructs one instance per agent with the
    daemon :class:`~collective.config.Config` and its node context, then sets
    :attr:`ddl` (so it is available in actions, not in ``__init__``). Actions may
    run concurrently on several worker threads.
    """

    #: the agent name; equals the DDL's ``metadata.name``
    name: ClassVar[str] = ""
    #: the validated DDL, set when the agent is registered
    ddl: AgentDDL | None = None

    def __init__(self, config: Config, node: Any) -> None:
        self.config = config
        #: the :class:`~collective.server.dispatch.NodeContext`
        self.node = node
        self.log = logging.getLogger(f"collective.agent.{self.name or type(self).__name__}")

    @classmethod
    def activate(cls, config: Config) -> bool:
        """Return False to stay disabled on this node (MCollective ``activate?``)."""
        return True

    @property
    def timeout(self) -> int:
        """Seconds an action may run: the DDL's ``metadata.timeout``."""
        return self.ddl.timeout if self.ddl is not None else 10

    @classmethod
    def actions(cls) -> set[str]:
        """Names of the methods marked :func:`action` (reserved and private names excluded)."""
        return set(_marked(cls)) - _reserved_names() - {n for n in _marked(cls) if n.startswith("_")}

    @classmethod
    def action_function(cls, name: str) -> Callable[..., Any]:
        """The function implementing action ``name``, looked up without ``getattr``.

        :raises KeyError: when ``name`` is not an action
        """
        if name not in cls.actions():
            raise KeyError(name)
        return _marked(cls)[name]


def _marked(cls: type) -> dict[str, Callable[..., Any]]:
    """Functions marked with :func:`action`, by name, honouring overrides in subclasses."""
    out: dict[str, Callable[..., Any]] = {}
    names = {name for klass in cls.__mro__ for name in vars(klass)}
    for name in names:
        value = inspect.getattr_static(cls, name, None)
        if inspect.isfunction(value) and getattr(value, ACTION_MARK, False) is True:
            out[name] = value
    return out


def _reserved_names() -> set[str]:
    """Attributes of :class:`Agent` itself: never actions, even when marked."""
    return {name for klass in Agent.__mro__ for name in vars(klass)} | {"config", "node", "log"}


def check_agent(agent_cls: type, ddl: AgentDDL) -> list[str]:
    """Problems between an agent class and its DDL (empty when they match).

    Every DDL action needs an ``@action`` method and every ``@action`` method a
    DDL action; each message names the class and the DDL file.
    """
    where = f"{agent_cls.__module__}.{agent_cls.__qualname__}"
    problems: list[str] = []
    if not (isinstance(agent_cls, type) and issubclass(agent_cls, Agent)):
        return [f"{where} is not a subclass of collective.agent.Agent"]
    if agent_cls.name != ddl.name:
        problems.append(f"agent class {where} has name {agent_cls.name!r} but DDL {ddl.source} "
                        f"describes agent {ddl.name!r}")
    marked = _marked(agent_cls)
    for name in sorted(set(marked) & (_reserved_names() | {n for n in marked if n.startswith("_")})):
        problems.append(f"agent class {where}: method {name!r} is marked @action but that name "
                        "is reserved or private and can never be an action")
    methods = agent_cls.actions()
    for name in sorted(set(ddl.actions) - methods):
        problems.append(f"agent class {where} has no @action method {name!r} declared in DDL "
                        f"{ddl.source}")
    for name in sorted(methods - set(ddl.actions)):
        problems.append(f"agent class {where} has an @action method {name!r} that DDL "
                        f"{ddl.source} does not declare")
    return problems
