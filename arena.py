"""Start LoRA Arena: `python arena.py` (the README's first command; also the Hugging Face Space's app_file)."""
import sys

from app.start import main

if __name__ == "__main__":
    sys.exit(main())
