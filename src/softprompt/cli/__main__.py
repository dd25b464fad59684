"""`python -m softprompt.cli`: the command line (also under `accelerate launch -m softprompt.cli`)."""

import sys

from softprompt.cli import main

sys.exit(main())
