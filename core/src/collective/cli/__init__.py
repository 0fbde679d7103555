"""The ``mco`` command line."""
