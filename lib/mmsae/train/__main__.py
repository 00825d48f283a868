"""``python -m mmsae.train`` / ``torchrun -m mmsae.train``: see :mod:`mmsae.train.cli`."""

from .cli import main

raise SystemExit(main())
