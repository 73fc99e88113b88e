"""Command line: ``mtlrnn train`` and ``mtlrnn eval``. Thin: parses, then calls the library.

Exit codes: 0 success, 2 bad input (config, flags or data), with one line on stderr that
names the key and what is allowed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlrnn", description="Train multi-task recurrent networks in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train and evaluate one run")
    train.add_argument(
        "--config",
        help="YAML config (default: the embedded synthetic suite, configs/synthetic.yaml)",
    )
    train.add_argument("--workdir", help="output directory (default: runs/synthetic-<time>)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.hidden_size=256 (repeatable)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar or table")
    ev = sub.add_parser("eval", help="evaluate the latest checkpoint of a run")
    ev.add_argument("--workdir", required=True, help="the run's directory")
    ev.add_argument("--quiet", action="store_true", help="print only the JSON result")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtlrnn`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    # Imported after argument parsing so that --help is instant.
    import json

    from mtlrnn.config import ConfigError
    from mtlrnn.config import load_config
    from mtlrnn.reporting import json_safe

    try:
        if args.command == "train":
            from mtlrnn.run import fit

            cfg = load_config(args.config, args.overrides)
            summary = fit(cfg, args.workdir, verbose=not args.quiet)
            if args.quiet:
                print(json.dumps(json_safe(summary["eval"]), sort_keys=True))
        else:
            from mtlrnn.run import evaluate

            result = evaluate(args.workdir, verbose=not args.quiet)
            print(json.dumps(json_safe(result), sort_keys=True))
    except ConfigError as e:
        print(f"mtlrnn: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        # Data problems (a sequence longer than every bucket, a malformed file) name their
        # source in the message; they are input errors, not crashes.
        print(f"mtlrnn: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        # An unwritable workdir, a full disk, an unreadable checkpoint: no stack trace.
        print(f"mtlrnn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mtlrnn: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
