"""`python benches/load.py SCENARIO [options]`: the same as `wsprism bench ...`."""
import sys
from pathlib import Path

try:
    import wsprism  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsprism.loadgen import main

if __name__ == "__main__":
    sys.exit(main())
