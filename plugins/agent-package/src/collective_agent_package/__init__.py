"""collective-agent-package: the ``package`` agent (apt/dpkg and dnf/yum) and ``mco package``."""

__version__ = "0.1.0"
