"""`python -m litevar` runs the `litevar` command."""
import sys

from litevar.commands.cli import main

sys.exit(main())
