import sys

from fpn.cli import main

sys.exit(main())
