import sys

from clipdef.cli import main

sys.exit(main())
