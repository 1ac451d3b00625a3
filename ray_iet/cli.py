"""Command line: `ray-iet train`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ray_iet.config import ConfigError, add_config_arguments, config_from_args

logger = logging.getLogger("ray_iet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-iet", description="Redistributed ensemble training (IET-AGC+) of diffusion models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model; with no options, the embedded scikit-learn digits demo")
    add_train_arguments(train)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue the run folder from its last complete round")
    add_config_arguments(parser)


def run_train(args: argparse.Namespace) -> int:
    # Imported here so that `--help` and config errors do not pay for importing torch and Ray.
    from ray_iet.train import train

    config = config_from_args(args)
    summary = train(config, resume=args.resume)
    print(f"final model: {summary['final_model']}")
    return 0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return run_train(args)
    except ConfigError as error:
        print(f"ray-iet: {error}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
