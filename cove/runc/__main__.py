"""``python -m cove.runc``: the same as the ``cove-runc`` console script."""

import sys

from cove.runc import main

sys.exit(main())
