"""`python -m histofuse`: the command line, run by the interpreter that imports the package."""

import sys

from histofuse.cli import main

sys.exit(main())
