"""``python -m t2v_turbo``: the ``t2v-turbo`` command line."""

import sys

from t2v_turbo.cli import main

sys.exit(main())
