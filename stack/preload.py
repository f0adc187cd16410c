"""``python stack/preload.py <airflow arguments>``: an Airflow command whose process has
already imported the third-party libraries the project's tasks import.

Airflow forks every task from the process that runs its executor (the LocalExecutor's workers
are forked from the scheduler, a Celery worker's pool processes from the worker), so what that
process imported once, every task has for free. Without it each task paid ~1.5 s of CPU
importing pandas, pyarrow, pandera and scikit-learn before any work (docs/benchmarks.md,
"Task start-up"), which at `AQ_INGEST_BATCH_SIZE` small batches is most of an hourly run.

Only third-party modules, found by reading (never running) the module-level imports of the
installed ``pipeline`` package: the project's own code is imported by each task from disk, so
a new checkout reaches the next task without a restart (a library upgrade needs one, as for
any running process). Run by path, not ``-m``: a project directory need not hold ``stack/``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path

PROJECT_PACKAGES = ("pipeline",)


def third_party_imports(package: str = "pipeline") -> list[str]:
    """The non-stdlib modules ``package``'s files import at module level, sorted."""
    spec = importlib.util.find_spec(package)  # finds without importing the package
    if spec is None or not spec.submodule_search_locations:
        return []
    found: set[str] = set()
    for root in spec.submodule_search_locations:
        for path in Path(root).rglob("*.py"):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            except (OSError, SyntaxError, ValueError):
                continue
            for node in tree.body:
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module)
    return sorted(name for name in found
                  if name.split(".")[0] not in sys.stdlib_module_names
                  and name.split(".")[0] not in PROJECT_PACKAGES)


def preload(names: list[str]) -> list[str]:
    """Import ``names``; return the ones that failed (a task importing them fails with its
    own error, so a missing library is reported where it matters, not here)."""
    # as pipeline.__main__.quiet_openmp_waits: OpenMP reads its wait policy when it loads,
    # and the tasks forked from here inherit the loaded runtime
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import error: the task will report it
            failed.append(name)
    return failed


def main() -> int:
    # run by path, Python put stack/ first on sys.path: its modules must not shadow a library
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    failed = preload(third_party_imports())
    if failed:
        print(f"stack/preload.py: not preloaded (the tasks import them themselves): "
              f"{', '.join(failed)}", file=sys.stderr)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *sys.argv[1:]]
    airflow_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
