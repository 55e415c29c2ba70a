"""Launch the side-by-side demo: `python demos/app.py [--port 7860]` (same as `accel demo`)."""

import argparse

from accel.demo.app import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    main(args.host, args.port)
