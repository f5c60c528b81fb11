"""``python -m tests.golden``: record the JSON report's shape in tests/golden/report.shape.json."""

import sys

from tests.golden import main

sys.exit(main())
