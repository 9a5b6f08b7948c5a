"""``python -m robustrain.cli`` is the ``robustrain`` command (e.g. under torchrun)."""
import sys

from .main import main

sys.exit(main())
