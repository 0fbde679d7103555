"""The ``process`` agent: list processes by literal substring (or a guarded regex) and signal them."""

__version__ = "0.1.0"
