import sys

from pgo.commands import main

sys.exit(main())
