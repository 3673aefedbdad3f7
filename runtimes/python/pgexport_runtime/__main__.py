import sys

from pgexport_runtime.cli import main

sys.exit(main())
