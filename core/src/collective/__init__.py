"""collective: server orchestration and parallel job execution in the line of MCollective."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker plugin authors decorate their hook implementations with:
#: ``from collective import hookimpl``.
hookimpl = pluggy.HookimplMarker("collective")

__all__ = ["__version__", "hookimpl"]
