"""MCollective-compatible action policies for collective (``authorization.provider: actionpolicy``)."""

__version__ = "0.1.0"
