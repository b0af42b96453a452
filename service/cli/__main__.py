"""`python -m service.cli ...` is `bitplan ...` (the demo and the RQ worker start servers this way)."""

import sys

from service.cli import main

sys.exit(main())
