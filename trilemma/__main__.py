import sys

from trilemma.cli import main

sys.exit(main())
