import sys

from keepword.cli import main

sys.exit(main())
