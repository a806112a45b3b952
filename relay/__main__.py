"""``python -m relay``: the ``relay`` command (``relay.cli``)."""

import sys

from .cli import main

sys.exit(main())
