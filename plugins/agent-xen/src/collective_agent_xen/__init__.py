"""collective-agent-xen: manage Xen domains through libvirt (libxl) or the xl toolstack."""

__version__ = "0.1.0"
