"""`python -m mxd.cli`: the `mxd` command."""
import sys

from mxd.cli import main

sys.exit(main())
