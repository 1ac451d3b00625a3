"""Train IET-AGC+ from a config, then evaluate the model; with no arguments, the embedded digits demo.

Runs locally (`python jobs/run_iet.py`) and as a Ray job
(`ray job submit --working-dir . -- python jobs/run_iet.py --config configs/digits.yaml`).
Options are those of `ray-iet train`; `--help` lists them.
"""

import sys

from ray_iet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
