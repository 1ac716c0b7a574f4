import sys

from tcpstack.cli import main

sys.exit(main())
