import sys

from pooler.cli import main

sys.exit(main())
