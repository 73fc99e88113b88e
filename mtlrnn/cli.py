"""Command line: ``mtlrnn train``, ``eval``, ``compare`` and ``predict``. Thin: parses, then
calls the library.

Results (the result table, JSON) go to stdout; progress, notices and warnings (the ``mtlrnn``
logger) to stderr, so ``mtlrnn train > result.txt`` keeps the result.

Exit codes: 0 success (also a training run stopped by SIGTERM or SIGINT after saving a
checkpoint: rerun the same command to resume), 1 an OS error (unwritable workdir, full disk),
2 bad input (config, flags or data), with one line on stderr that names the key and what is
allowed, 3 training stopped on a non-finite loss or gradient (``train.on_nonfinite: stop``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _version() -> str:
    from mtlrnn import __version__

    return f"mtlrnn {__version__}"


def _add_set(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )


CHECKPOINT_HELP = (
    "which checkpoint: latest (default; the newest good one), best (kept with "
    "checkpoint.best_metric) or a step number"
)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtlrnn train``."""
    parser.add_argument(
        "--config",
        help="YAML config (default: the run's saved config when --workdir holds a run, else "
        "the embedded synthetic suite, configs/synthetic.yaml)",
    )
    parser.add_argument("--workdir", help="output directory (default: runs/synthetic-<time>)")
    _add_set(
        parser,
        "override config keys, e.g. --set model.hidden_size=256 train.steps=500 "
        "(several after one --set; --set is repeatable)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="when --workdir already holds a run that cannot be continued, move its files "
        "aside into <workdir>/replaced-<time>/ and start afresh (nothing is deleted)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress or description; print the result as JSON (notices still on stderr)",
    )


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtlrnn eval``."""
    parser.add_argument("--workdir", required=True, help="the run's directory")
    parser.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="print only the JSON result")


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtlrnn compare``."""
    parser.add_argument("--config", help="YAML config shared by every run (default: built-in)")
    parser.add_argument(
        "--methods",
        help="comma-separated weighting names, e.g. ew,uw,pcgrad (ew = equal); required "
        "unless --report-only, which otherwise reads --outdir/plan.json",
    )
    parser.add_argument("--seeds", type=int, help="seeds per method and baseline (default: 3)")
    parser.add_argument("--outdir", required=True, help="the comparison's directory")
    _add_set(parser, "override config keys in every run (several after one --set; repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, as subprocesses")
    parser.add_argument(
        "--no-vectorize",
        dest="vectorize",
        action="store_false",
        help="train each seed as its own run (default: a method's seeds train together in "
        "one compiled step, train.num_seeds)",
    )
    parser.add_argument("--shard", metavar="I/N", help="only runs whose index %% N == I (0-based)")
    parser.add_argument("--split", default="test", help="evaluation split compared (default: test)")
    parser.add_argument("--metrics", help="comma-separated metric names (default: all)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report")
    parser.add_argument("--quiet", action="store_true", help="no progress lines or table")


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtlrnn predict``."""
    parser.add_argument("--workdir", required=True, help="the trained run's directory")
    parser.add_argument("--input", required=True, help="CoNLL-U (or column) file to tag")
    parser.add_argument("--output", required=True, help="where to write the tagged file")
    parser.add_argument("--batch-size", type=int, default=0, help="sentences per batch")
    parser.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    parser.add_argument("--quiet", action="store_true", help="no summary line")


def _parser() -> argparse.ArgumentParser:
    """The parser of the ``mtlrnn`` command and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="mtlrnn", description="Train multi-task recurrent networks in JAX."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_arguments(sub.add_parser("train", help="train and evaluate one run"))
    _add_eval_arguments(
        sub.add_parser("eval", help="evaluate a checkpoint of a run (the latest by default)")
    )
    _add_compare_arguments(
        sub.add_parser(
            "compare",
            help="weighting methods vs single-task baselines over seeds (Δm, Δp)",
            description="Train single-task baselines and each method over seeds (resumable), "
            "then write compare.md/.csv/.json and delta_m.png to --outdir.",
        )
    )
    _add_predict_arguments(
        sub.add_parser(
            "predict",
            help="tag a file with a trained run (CoNLL-U in, CoNLL-U with predicted columns out)",
        )
    )
    return parser


def _largest_buffer(cfg: Any, seeds: int | None = None) -> int | None:
    """Estimated bytes of the trunk's largest activation buffer for ``cfg`` (None when the
    longest sequence is not known before the data is read); a vmapped population step
    (``train.num_seeds``, or ``seeds`` trained together, with ``train.population_mode:
    vmap``) holds every seed's at once. (The tuning applies on CPU only, where ``auto`` is
    ``map``: one seed's buffers at a time.)"""
    from mtlrnn.cpu_tuning import largest_buffer_bytes
    from mtlrnn.model.cells import get_cell

    if cfg.data.buckets:
        length = max(cfg.data.buckets)
    elif cfg.data.source == "csv":
        length = cfg.data.csv.window
    else:
        return None
    return largest_buffer_bytes(
        batch=cfg.train.batch_size * (seeds or cfg.train.num_seeds)
        if cfg.train.population_mode == "vmap"
        else cfg.train.batch_size,
        length=length,
        hidden=cfg.model.hidden_size,
        gates=get_cell(cfg.model.cell).num_gates,
        directions=2 if cfg.model.bidirectional else 1,
        itemsize=2 if cfg.model.compute_dtype == "bfloat16" else 4,
    )


def _compare_buffer(args: argparse.Namespace) -> int | None:
    """:func:`_largest_buffer` of a comparison's population step (each method's seeds train
    together unless ``--no-vectorize``); None when it cannot be told yet (compare then
    reports any config error itself)."""
    if not args.methods:
        return None
    from mtlrnn.config import ConfigError
    from mtlrnn.config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError, ValueError):
        return None
    return _largest_buffer(cfg, seeds=(args.seeds or 3) if args.vectorize else 1)


def _train_config(args: argparse.Namespace) -> Any:
    """The config of ``mtlrnn train``: --config, else the saved config of the run in
    --workdir (so extending a run needs only --set train.steps=N), else the defaults."""
    from mtlrnn.config import load_config
    from mtlrnn.reporting import LOGGER
    from mtlrnn.training.workdir import saved_config_path

    path = args.config
    if path is None and args.workdir is not None and not args.overwrite:
        path = saved_config_path(args.workdir)
        if path is not None:
            LOGGER.info(f"using the config of the run in {args.workdir} ({path})")
    return load_config(path, args.overrides)


def _run_train(args: argparse.Namespace) -> int:
    """``mtlrnn train``: fit the run; with --quiet print its evaluation as JSON."""
    import json

    from mtlrnn import cpu_tuning
    from mtlrnn.reporting import json_safe

    cfg = _train_config(args)
    # Before the first JAX computation (see mtlrnn/cpu_tuning.py).
    cpu_tuning.apply(largest_buffer=_largest_buffer(cfg))
    from mtlrnn.training.run import fit

    summary = fit(cfg, args.workdir, verbose=not args.quiet, overwrite=args.overwrite)
    if summary.get("interrupted"):
        # Stopped by SIGTERM/SIGINT after a checkpoint (fit printed the line): a clean
        # stop, and rerunning the same command resumes.
        return 0
    if args.quiet:
        if "seeds" in summary:  # a population: each seed's evaluation
            evals = {seed: s["eval"] for seed, s in summary["seeds"].items()}
        else:
            evals = summary["eval"]
        print(json.dumps(json_safe(evals), sort_keys=True))
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    """``mtlrnn compare``: run the comparison; 1 when any of its runs failed."""
    from mtlrnn import cpu_tuning

    cpu_tuning.apply(largest_buffer=_compare_buffer(args))
    from mtlrnn.compare import compare

    result = compare(
        args.config,
        args.methods,
        args.seeds,
        args.outdir,
        overrides=args.overrides,
        jobs=args.jobs,
        shard=args.shard,
        split=args.split,
        metrics=args.metrics,
        report_only=args.report_only,
        verbose=not args.quiet,
        vectorize=args.vectorize,
    )
    if result["failed"]:
        print(
            f"mtlrnn: error: {len(result['failed'])} run(s) failed: {', '.join(result['failed'])}",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    """``mtlrnn predict``: tag --input with the run into --output."""
    from mtlrnn import cpu_tuning

    cpu_tuning.apply()
    from mtlrnn.predict import predict

    predict(
        args.workdir,
        args.input,
        args.output,
        batch_size=args.batch_size,
        verbose=not args.quiet,
        checkpoint=args.checkpoint,
    )
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    """``mtlrnn eval``: evaluate a checkpoint; with --json or --quiet print JSON."""
    import json

    from mtlrnn import cpu_tuning
    from mtlrnn.reporting import json_safe

    cpu_tuning.apply()
    from mtlrnn.training.run import evaluate

    as_json = args.json or args.quiet
    result = evaluate(args.workdir, verbose=not as_json, checkpoint=args.checkpoint)
    if as_json:
        print(json.dumps(json_safe(result), sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtlrnn`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    # Imported after argument parsing so that --help and --version are instant.
    import logging

    from mtlrnn.config import ConfigError
    from mtlrnn.reporting import configure_logging

    # Notices (resumed, stopped, ...) and warnings show with --quiet too; it drops progress,
    # the data description and the table.
    configure_logging(logging.INFO)
    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "compare":
            return _run_compare(args)
        if args.command == "predict":
            return _run_predict(args)
        return _run_eval(args)
    except RuntimeError as e:
        from mtlrnn.training.run import NonFiniteError

        if not isinstance(e, NonFiniteError):
            raise
        print(f"mtlrnn: error: {e}", file=sys.stderr)
        return 3
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


if __name__ == "__main__":
    sys.exit(main())
