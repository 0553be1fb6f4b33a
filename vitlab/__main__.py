"""`python -m vitlab ...` (and `torchrun -m vitlab train ...`) run the command-line interface."""
import sys

from vitlab.cli import main

sys.exit(main())
