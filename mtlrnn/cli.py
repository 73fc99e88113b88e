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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlrnn", description="Train multi-task recurrent networks in JAX."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train and evaluate one run")
    train.add_argument(
        "--config",
        help="YAML config (default: the run's saved config when --workdir holds a run, else "
        "the embedded synthetic suite, configs/synthetic.yaml)",
    )
    train.add_argument("--workdir", help="output directory (default: runs/synthetic-<time>)")
    _add_set(
        train,
        "override config keys, e.g. --set model.hidden_size=256 train.steps=500 "
        "(several after one --set; --set is repeatable)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="when --workdir already holds a run that cannot be continued, move its files "
        "aside into <workdir>/replaced-<time>/ and start afresh (nothing is deleted)",
    )
    train.add_argument(
        "--quiet",
        action="store_true",
        help="no progress or description; print the result as JSON (notices still on stderr)",
    )
    ev = sub.add_parser("eval", help="evaluate a checkpoint of a run (the latest by default)")
    ev.add_argument("--workdir", required=True, help="the run's directory")
    ev.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.add_argument("--quiet", action="store_true", help="print only the JSON result")
    cmp = sub.add_parser(
        "compare",
        help="weighting methods vs single-task baselines over seeds (Δm, Δp)",
        description="Train single-task baselines and each method over seeds (resumable), "
        "then write compare.md/.csv/.json and delta_m.png to --outdir.",
    )
    cmp.add_argument("--config", help="YAML config shared by every run (default: built-in)")
    cmp.add_argument(
        "--methods",
        help="comma-separated weighting names, e.g. ew,uw,pcgrad (ew = equal); required "
        "unless --report-only, which otherwise reads --outdir/plan.json",
    )
    cmp.add_argument("--seeds", type=int, help="seeds per method and baseline (default: 3)")
    cmp.add_argument("--outdir", required=True, help="the comparison's directory")
    _add_set(cmp, "override config keys in every run (several after one --set; repeatable)")
    cmp.add_argument("--jobs", type=int, default=1, help="runs at once, as subprocesses")
    cmp.add_argument(
        "--no-vectorize",
        dest="vectorize",
        action="store_false",
        help="train each seed as its own run (default: a method's seeds train together in "
        "one compiled step, train.num_seeds)",
    )
    cmp.add_argument("--shard", metavar="I/N", help="only runs whose index %% N == I (0-based)")
    cmp.add_argument("--split", default="test", help="evaluation split compared (default: test)")
    cmp.add_argument("--metrics", help="comma-separated metric names (default: all)")
    cmp.add_argument("--report-only", action="store_true", help="train nothing; report")
    cmp.add_argument("--quiet", action="store_true", help="no progress lines or table")
    pred = sub.add_parser(
        "predict",
        help="tag a file with a trained run (CoNLL-U in, CoNLL-U with predicted columns out)",
    )
    pred.add_argument("--workdir", required=True, help="the trained run's directory")
    pred.add_argument("--input", required=True, help="CoNLL-U (or column) file to tag")
    pred.add_argument("--output", required=True, help="where to write the tagged file")
    pred.add_argument("--batch-size", type=int, default=0, help="sentences per batch")
    pred.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    pred.add_argument("--quiet", action="store_true", help="no summary line")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtlrnn`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    # Imported after argument parsing so that --help and --version are instant.
    import json
    import logging

    from mtlrnn import cpu_tuning
    from mtlrnn.config import ConfigError
    from mtlrnn.reporting import configure_logging
    from mtlrnn.reporting import json_safe

    # Notices (resumed, stopped, ...) and warnings show with --quiet too; it drops progress,
    # the data description and the table.
    configure_logging(logging.INFO)
    try:
        if args.command == "train":
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
        elif args.command == "compare":
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
                    f"mtlrnn: error: {len(result['failed'])} run(s) failed: "
                    f"{', '.join(result['failed'])}",
                    file=sys.stderr,
                )
                return 1
        elif args.command == "predict":
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
        else:
            cpu_tuning.apply()
            from mtlrnn.training.run import evaluate

            as_json = args.json or args.quiet
            result = evaluate(args.workdir, verbose=not as_json, checkpoint=args.checkpoint)
            if as_json:
                print(json.dumps(json_safe(result), sort_keys=True))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
