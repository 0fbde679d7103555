"""What a call returns: replies, and the statistics MCollective users know."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

STATUS_LABELS = {
    0: "OK",
    1: "Request Aborted",
    2: "Unknown Action",
    3: "Missing Request Data",
    4: "Invalid Request Data",
    5: "Unknown Request Status",
}


@dataclass
class NodeReply:
    """One node's verified reply."""

    sender: str
    agent: str
    action: str
    statuscode: int
    statusmsg: str
    data: dict[str, Any]
    #: milliseconds from publishing the request to receiving this reply
    elapsed_ms: float
    #: the node's own clock when it replied (unix ms)
    time: int = 0

    @property
    def ok(self) -> bool:
        return self.statuscode == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sender": self.sender, "agent": self.agent, "action": self.action,
            "statuscode": self.statuscode, "statusmsg": self.statusmsg, "data": self.data,
        }


@dataclass
class CallStats:
    """Counts and timings of one call (``-v`` prints them)."""

    request_id: str = ""
    #: nodes the request was sent to: discovered, or named for direct addressing
    expected: list[str] = field(default_factory=list)
    responded: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    discovery_performed: bool = False
    start_time: float = 0.0
    discovery_time: float = 0.0
    agent_time: float = 0.0
    total_time: float = 0.0
    forged_replies: int = 0
    duplicate_replies: int = 0
    late_replies: int = 0
    #: every node discovery found (``expected`` may be fewer with ``--limit-nodes``)
    discovered: list[str] = field(default_factory=list)
    #: nodes the inventory says missed their registrations (still addressed, flagged)
    stale: list[str] = field(default_factory=list)

    @property
    def no_response(self) -> list[str]:
        answered = set(self.responded)
        return sorted(node for node in self.expected if node not in answered)


@dataclass
class Result:
    """The replies to one request and its statistics."""

    replies: list[NodeReply] = field(default_factory=list)
    stats: CallStats = field(default_factory=CallStats)

    def __iter__(self) -> Iterator[NodeReply]:
        return iter(self.replies)

    def __len__(self) -> int:
        return len(self.replies)

    def merge(self, other: Result) -> None:
        """Add one batch's replies and counts to this result."""
        self.replies = sorted([*self.replies, *other.replies], key=lambda r: r.sender)
        self.stats.responded = sorted({*self.stats.responded, *other.stats.responded})
        self.stats.unexpected += other.stats.unexpected
        self.stats.agent_time += other.stats.agent_time
        self.stats.forged_replies += other.stats.forged_replies
        self.stats.duplicate_replies += other.stats.duplicate_replies
        self.stats.request_id = self.stats.request_id or other.stats.request_id

    @property
    def ok(self) -> list[NodeReply]:
        return [r for r in self.replies if r.ok]

    @property
    def failed(self) -> list[NodeReply]:
        return [r for r in self.replies if not r.ok]

    def exit_code(self) -> int:
        """MCollective's exit status (docs/decisions.md, Client).

        0 all OK; 1 nothing discovered; 2 some replies failed or some nodes did not
        answer; 3 discovered but no replies at all; 4 no discovery and no replies.
        """
        stats = self.stats
        if stats.discovery_performed and not stats.expected:
            return 1
        if not self.replies:
            return 3 if stats.discovery_performed else 4
        if self.failed or stats.no_response:
            return 2
        return 0
