"""``python -m robustrain`` is the ``robustrain`` command (also ``python -m robustrain.cli``, e.g. under torchrun)."""
import sys

from .cli import main

sys.exit(main())
