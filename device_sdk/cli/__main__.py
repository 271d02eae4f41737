"""``python -m device_sdk.cli``: the same as the ``device-sdk`` console script."""

import sys

from device_sdk.cli import main

sys.exit(main())
