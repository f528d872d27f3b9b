"""`python -m server` is `kinwire serve` (other commands too: `python -m server migrate`)."""

import sys

from server.cli import main

sys.exit(main(sys.argv[1:], default="serve"))
