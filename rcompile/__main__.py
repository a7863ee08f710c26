"""`python -m rcompile` runs the command-line interface."""

from rcompile.launcher import run

run()
