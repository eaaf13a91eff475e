"""`python -m app`: start the web app."""
import sys

from .start import main

sys.exit(main())
