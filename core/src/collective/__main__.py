"""``python -m collective`` is ``mco``."""

from .cli.main import main

main()
