import sys

from crrelu_lightning.cli import main

sys.exit(main())
