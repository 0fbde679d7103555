"""Agents that ship with the core (``rpcutil``)."""
