"""Node facts from YAML files (fact source ``yaml``)."""

__version__ = "0.1.0"
