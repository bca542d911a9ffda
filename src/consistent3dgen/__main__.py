"""``python -m consistent3dgen``: the command line."""

import sys

from .cli import main

sys.exit(main())
