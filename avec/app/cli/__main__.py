"""``python -m avec.app.cli``: the ``avec`` command."""

from . import main

main()
