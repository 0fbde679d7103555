"""collective-agent-service: manage services with systemd or SysV init scripts."""

__version__ = "0.1.0"
