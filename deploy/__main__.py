"""``python -m deploy demo`` replays the seed incident against the simulator."""

import sys

from deploy import demo

if __name__ == "__main__":
    if sys.argv[1:] != ["demo"]:
        sys.exit("usage: python -m deploy demo")
    sys.exit(demo.main())
