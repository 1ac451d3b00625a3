"""Command line: `ray-iet train | evaluate | compare | tune`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from ray_iet.config import ConfigError, add_config_arguments, config_from_args

logger = logging.getLogger("ray_iet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-iet", description="Redistributed ensemble training (IET-AGC+) of diffusion models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model; with no options, the embedded scikit-learn digits demo")
    add_train_arguments(train)

    evaluate = commands.add_parser("evaluate", help="measure memorization and quality of a trained model")
    evaluate.add_argument("model", type=Path, help="run folder or diffusers DDPMPipeline folder")
    evaluate.add_argument("--output", type=Path, help="report folder [default: RUN/evaluation for a run folder, so the training run's RUN/report stays; else ./evaluation]")
    add_config_arguments(evaluate)

    compare = commands.add_parser("compare", help="train plain, IET, IET-AGC and IET-AGC+ on equal sample visits and report")
    compare.add_argument("--variants", default="plain,iet,iet-agc,iet-agc+", help="comma-separated variants to train [default: all four]")
    add_config_arguments(compare)

    tune = commands.add_parser("tune", help="search lambda, R, P, K and local epochs with Ray Tune; writes best_config.yaml")
    add_config_arguments(tune)
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
    if "evaluation" in summary:
        print_headline(summary["evaluation"])
    return 0


def print_headline(evaluation: dict[str, Any]) -> None:
    memorization, fid = evaluation["memorization"], evaluation["fid"]
    print(
        f"{evaluation['name']}: memorized {100 * memorization['headline_fraction']:.1f}% of {memorization['num_generated']} "
        f"generations (nearest-neighbour ratio < 1/3), d1/d2 < 1/3: {100 * memorization['d1_d2_fraction']:.1f}%, "
        f"FID {fid['value']:.3f} ({fid['extractor_name']})"
    )
    if "report" in evaluation:
        print(f"report: {evaluation['report']}")


def run_evaluate(args: argparse.Namespace) -> int:
    from ray_iet.data.sources import decode_images
    from ray_iet.evaluate.report import write_report
    from ray_iet.evaluate.run import evaluate_model, load_model
    from ray_iet.train import load_data

    is_run = (args.model / "config.yaml").is_file()
    if args.config is None and is_run:
        args.config = args.model / "config.yaml"
    config = config_from_args(args)
    unet, scheduler = load_model(args.model)
    evaluation = evaluate_model(config.name if is_run else args.model.name, unet, scheduler, decode_images(load_data(config)), config.evaluation)
    output = args.output or (args.model / "evaluation" if is_run else Path("evaluation"))
    report = write_report([evaluation], output, title=f"Evaluation of {args.model}", top_copies=config.evaluation.top_copies)
    print_headline({**evaluation.to_dict(), "report": str(report)})
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ray_iet.compare import compare

    config = config_from_args(args)
    result = compare(config, [variant.strip() for variant in args.variants.split(",") if variant.strip()])
    for model in result["models"]:
        print_headline(model)
    print(f"report: {result['report']}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from ray_iet.tune import run_tune as search

    result = search(config_from_args(args))
    print(f"best parameters: {result['params']}")
    print(f"best metrics: {result['metrics']}")
    print(f"best config: {result['best_config']}")
    return 0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "compare": run_compare, "tune": run_tune}


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except Exception as error:
        if not isinstance(error, user_errors()):
            raise
        print(f"ray-iet: {error}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the input, reported as one message instead of a traceback."""
    from ray_iet.data.sources import DataError
    from ray_iet.resources import ResourceError
    from ray_iet.train import RunFolderError

    return (ConfigError, DataError, ResourceError, RunFolderError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
