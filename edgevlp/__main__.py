import sys

from edgevlp.cli import main

sys.exit(main())
