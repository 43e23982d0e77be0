"""The ``covidct`` command: argparse subcommands that parse arguments and call the package.

No logic lives here. Each subcommand has an ``_add_<name>(subparsers)`` function that declares its
arguments and sets ``func`` to a small ``_run_<name>(args)`` that imports the package function it
calls (imports are lazy so ``covidct --help`` does not start TensorFlow).
"""

from __future__ import annotations

import argparse
import sys

from covidct import DISCLAIMER, __version__


def _add_models(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list registered models", description="List registered models.")
    parser.add_argument("--task", choices=["classification", "segmentation", "volume"], default=None)
    parser.add_argument("--family", default=None, help="only this family (e.g. transfusion)")
    parser.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from covidct.models import get_spec, list_models

    names = list_models(task=args.task, family=args.family)
    header = f"{'name':<26} {'task':<15} {'family':<20} {'input':<16} {'imagenet':<8} grad-cam layer"
    print(header)
    print("-" * len(header))
    for name in names:
        spec = get_spec(name)
        shape = "x".join(str(s) for s in spec.input_shape)
        print(
            f"{name:<26} {spec.task:<15} {spec.family:<20} {shape:<16} "
            f"{'yes' if spec.imagenet_weights else 'no':<8} {spec.gradcam_layer or '-'}"
        )
    print(f"\n{len(names)} model(s).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct",
        description="covidct: COVID-19 detection in chest CT, research toolkit.",
        epilog=DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_models(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from covidct.errors import CovidctError

    try:
        return int(args.func(args) or 0)
    except CovidctError as error:
        print(f"covidct {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"covidct {args.command}: interrupted; finished work is kept, rerun to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
