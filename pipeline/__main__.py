"""``python -m pipeline <step>``: the one entry point dvc.yaml, Airflow and people use."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

STEPS = {
    "ingest": "fetch a window from the configured source into data/raw",
    "backfill": "ingest a long date range in provider-sized chunks, resumably",
    "preprocess": "validate raw data, quarantine bad rows, build features",
    "train": "fit one model per target x horizon (the candidate)",
    "evaluate": "score the candidate and baselines on the time-ordered holdout",
    "promote": "make the candidate champion if it passes the gate",
    "predict": "batch forecasts for every location, target and horizon",
    "score": "realised accuracy of earlier forecasts against new observations",
    "drift": "PSI of recent features against the champion's training reference",
    "rollback": "restore the previous champion (or --to VERSION) and re-issue the forecasts",
    "summary": "print the run summary table",
    "backtest": "rolling-origin backtest of a model over a window of target hours",
    "locations": "check (or --write) params.yaml's locations against a CSV file's stations",
}


def _parser() -> argparse.ArgumentParser:
    from pipeline.timeutil import cli_time  # pandas: after quiet_openmp_waits()

    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, help_text in STEPS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name in {"ingest", "backfill"}:
            cmd.add_argument("--start", type=cli_time,
                             help="UTC start, inclusive (ISO 8601 date or time)")
            cmd.add_argument("--end", type=cli_time,
                             help="UTC end, exclusive (ISO 8601 date or time)")
            cmd.add_argument(
                "--locations", help="comma-separated location ids (default: all in params.yaml)"
            )
        if name in {"preprocess", "predict"}:
            cmd.add_argument("--locations", help="comma-separated location ids: only their "
                             "partitions (one batch of a mapped Airflow task); default: all")
            cmd.add_argument("--finalize", action="store_true", dest="finalize_only",
                             default=None, help="only combine the partitions the batches "
                             "wrote into the step's reports")
        if name == "predict":
            cmd.add_argument("--model", metavar="VERSION", help="forecast with this registry "
                             "version (a mapped run pins the champion at its start); default: "
                             "the champion")
        if name == "backtest":
            cmd.add_argument("--start", help="first target hour, UTC, inclusive (ISO date or "
                             "time; default: params.yaml backtest, else the last backtest.days)")
            cmd.add_argument("--end", help="last target hour, UTC, exclusive (default: the hour "
                             "after the newest observation)")
            cmd.add_argument("--model", help="candidate, champion or a registry version "
                             "(default: backtest.model)")
            cmd.add_argument("--refit-every", type=float, metavar="DAYS", dest="refit_every",
                             help="refit every DAYS days on the data known then (0: no refit)")
            cmd.add_argument("--out", help="output directory (default: reports/backtest)")
        if name == "backfill":
            cmd.add_argument("--chunk-days", type=_positive_int, default=None,
                             help="days per request chunk")
        if name == "locations":
            cmd.add_argument("--write", action="store_true", default=None,
                             help="write the file's stations into params.yaml's locations")
            cmd.add_argument("--timezone", help="IANA time zone of new locations (default: "
                             "source.csv.time_zone when it names one, else UTC)")
        if name == "rollback":
            cmd.add_argument("--to", metavar="VERSION",
                             help="make this registered version champion (earlier or later)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 366:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..366 days")
    return value


def quiet_openmp_waits() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless the caller chose a policy).

    scikit-learn's OpenMP runtime busy-waits between parallel regions by default; with
    other processes on the cores that made training 2.5-5x slower (docs/benchmarks.md).
    It must be set before the runtime loads, i.e. before the step imports scikit-learn.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def main(argv: list[str] | None = None) -> int:
    quiet_openmp_waits()
    args = _parser().parse_args(argv)
    from pipeline.settings import Settings

    plain = Settings.from_env().log_format == "plain"
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=("" if plain else "%(asctime)s ") + "%(levelname)s %(name)s: %(message)s",
    )
    from pipeline.config import ConfigError
    from pipeline.context import Context
    from pipeline.errors import PipelineError
    from pipeline.pywarnings import relay_warnings_once
    from pipeline.redaction import install_log_redaction, redact

    install_log_redaction()
    relay_warnings_once()  # one WARNING line per distinct warning, not two stderr lines each

    try:
        module = importlib.import_module(f"pipeline.steps.{args.step}")
        options = {
            k: v for k, v in vars(args).items() if k not in {"step", "verbose"} and v is not None
        }
        if getattr(module, "NEEDS_CONTEXT", True):
            module.run(Context.load(), **options)
        else:  # a step that repairs params.yaml cannot need a valid one
            from pipeline.paths import ProjectPaths

            module.run(ProjectPaths.discover(), **options)
    except (ConfigError, PipelineError) as exc:
        print(redact(f"error: {args.step}: {exc}"), file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a read-only or missing directory: say which file
        where = f" ({exc.filename})" if exc.filename else ""
        print(redact(f"error: {args.step}: {exc.strerror or exc}{where}"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
