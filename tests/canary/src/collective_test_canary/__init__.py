"""A test-only agent: each action appends a line to the file in ``plugins.canary.log``."""
