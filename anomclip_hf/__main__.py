"""`python -m anomclip_hf ...` is the `anomclip` command line (so `accelerate launch -m anomclip_hf predict ...`
runs it in every process)."""

import sys

from anomclip_hf.cli import main

if __name__ == "__main__":
    sys.exit(main())
