"""``python -m entente_client``: see :mod:`entente_client.cli`."""

import sys

from .cli import main

sys.exit(main())
