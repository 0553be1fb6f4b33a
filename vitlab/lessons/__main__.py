"""`python -m vitlab.lessons`: regenerate the lesson notebooks (see build.py)."""
import sys

from vitlab.lessons.build import main

sys.exit(main())
