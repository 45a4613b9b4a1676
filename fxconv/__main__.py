"""``python -m fxconv`` runs the command line."""

from .cli import run

run()
