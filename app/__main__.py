"""`python -m app`: start the web app."""
import sys

from .server import main

sys.exit(main())
