"""`python -m vaetut train ...`: the command line lives in vaetut/run/cli.py."""
import sys

from .run.cli import main

if __name__ == "__main__":
    sys.exit(main())
