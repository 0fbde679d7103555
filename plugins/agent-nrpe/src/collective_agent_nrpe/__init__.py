"""collective-agent-nrpe: run the checks of ``nrpe.cfg`` through collective."""

__version__ = "0.1.0"
