"""`python -m ponder ...`: the command line, also as torchrun launches it
(`torchrun --nproc_per_node N -m ponder train rl CONFIG.yaml`)."""

import sys

from ponder.cli import main

sys.exit(main())
