"""Search IET-AGC+ hyperparameters with Ray Tune and write the best config as YAML.

Runs locally (`python jobs/tune_iet.py --config configs/digits.yaml`) and as a Ray job
(`ray job submit --working-dir . -- python jobs/tune_iet.py --config ...`).
Options are those of `ray-iet tune`; `--help` lists them.
"""

import sys

from ray_iet.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
