"""``python -m ernie_compress``: the CLI without the installed ``ernie-compress`` script."""

from .cli import app

app()
