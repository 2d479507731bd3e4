import sys

from recdemo.cli.main import main

sys.exit(main())
