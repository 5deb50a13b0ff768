"""`python -m seqcls`: the same command line as the `seqcls` script (the image and the tests run it this way)."""

from .cli import run

run()
