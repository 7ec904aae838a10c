import sys

from proxykernel.cli import main

sys.exit(main())
