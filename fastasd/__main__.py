import sys

from fastasd.cli import main

sys.exit(main())
