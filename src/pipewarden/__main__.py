import sys

from pipewarden.cli import main

sys.exit(main())
