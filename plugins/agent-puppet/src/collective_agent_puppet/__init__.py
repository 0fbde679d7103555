"""collective-agent-puppet: run, enable, disable and inspect the Puppet agent."""

__version__ = "0.1.0"
