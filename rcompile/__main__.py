"""`python -m rcompile` runs the command-line interface."""

from rcompile.cli import entry_point

entry_point()
