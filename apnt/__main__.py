import sys

from apnt.cli import main

sys.exit(main())
