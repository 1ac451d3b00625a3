"""Train IET-AGC+ from a config; with no arguments, the embedded scikit-learn digits demo.

Runs locally (`python jobs/run_iet.py`) and as a Ray job
(`ray job submit --working-dir . -- python jobs/run_iet.py --config configs/digits.yaml`).
"""

import argparse
import sys

from ray_iet.cli import add_train_arguments, configure_logging, run_train

if __name__ == "__main__":
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    sys.exit(run_train(parser.parse_args()))
