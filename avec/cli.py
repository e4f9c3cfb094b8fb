"""Kept for console scripts installed before the command line moved to ``avec.app.cli`` (they import
``avec.cli:main``); ``python -m avec.cli`` works too. New code imports ``avec.app.cli``."""

from .app.cli import BAD_INPUT, app, error_line, main  # noqa: F401

if __name__ == "__main__":  # pragma: no cover
    main()
