"""Mutation check of the pure core and the concierge's trust code, against the unit tests.

    python benchmarks/mutation.py [--jobs N] [--keep] [--json [PATH]]
    .ci/dev mutation [args]          (the same, from a fresh clone, at nice 10)

Why: a green suite only matters if it turns red when the code goes wrong. mutmut
makes hundreds of small wrong versions of the files below (a ``<`` turned into
``<=``, a constant changed, a call dropped) and runs the unit tests against each;
a version the tests do not notice "survives". Run this whenever ``core/`` or the
concierge's trust code changes. It takes about 5 minutes on 2 idle cores (longer
beside other work), so it stays out of ``.ci/run``.

What it does:

* installs mutmut 3 into the running interpreter's environment when it is missing;
* copies ``device_sdk/``, ``tests/``, ``pyproject.toml`` and what the tests read
  beside them into ``.mutation/`` (git-ignored), and appends mutmut's settings to
  that copy of ``pyproject.toml``: the checkout itself is never touched, and
  mutmut's own ``mutants/`` folder lands in ``.mutation/``;
* runs ``mutmut run`` at a lowered CPU priority (other work on the machine wins),
  with the mutated files' own tests first so that most mutants die in a second;
* prints the score per file: caught / all mutants, where "caught" means a test
  failed, timed out or crashed (timeouts are also shown apart);
* checks every survivor against ``benchmarks/mutation_survivors.txt``, where each
  one left standing has a one-line reason.

Exit status 0 when every file scores at least 95 % and every survivor is explained
by the list (and the list names no mutant that no longer survives), else 1. After a
run, ``cd .mutation && ../.venv/bin/mutmut show NAME`` prints one mutant's diff.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
SURVIVORS = ROOT / "benchmarks" / "mutation_survivors.txt"

MUTATED = (
    "device_sdk/core/failover.py",
    "device_sdk/core/retry.py",
    "device_sdk/core/liveness.py",
    "device_sdk/core/outcomes.py",
    "device_sdk/concierge/trust.py",
)
# The unit tests of the mutated files, which kill most of their mutants.
FIRST_TESTS = (
    "tests/unit/test_failover.py",
    "tests/unit/test_retry.py",
    "tests/unit/test_liveness.py",
    "tests/unit/test_outcomes.py",
    "tests/unit/test_concierge_document.py",
)
ORDER_PLUGIN = "mutation_test_order"
# What the unit tests read beside the package (the profiles, the fleet benchmark, the README).
ALSO_COPIED = ("benchmarks", "firmware_profiles", "README.md", f"{ORDER_PLUGIN}.py")
GOAL = 0.95
MUTMUT = "mutmut>=3,<4"

# mutmut 3 records one exit code per mutant in mutants/<file>.meta (its
# mutmut.stats.status_by_exit_code reads them). Caught: a test failed (1; 3 is a
# pytest internal error), the tests timed out (36, SIGXCPU 24/-24/152, 255),
# crashed (-9, -11) or the type checker refused the mutant (37). Missed: the tests
# passed (0) or no test ran the mutated function (5, 33). Anything else (None: not
# tested yet; 2: interrupted; 34: skipped) means the run did not finish.
TIMEOUT_CODES = frozenset({36, 24, -24, 152, 255})
CAUGHT_CODES = frozenset({1, 3, -9, -11, 37}) | TIMEOUT_CODES
MISSED_CODES = frozenset({0, 5, 33})

# Why the settings live in a generated copy of pyproject.toml: mutmut 3 reads its
# configuration only from ./pyproject.toml or ./setup.cfg, and the check must not
# need the project's own pyproject.toml to carry a tool's settings.
MUTMUT_SETTINGS = f"""

[tool.mutmut]
source_paths = ["device_sdk"]
also_copy = {json.dumps(list(ALSO_COPIED))}
only_mutate = {json.dumps(list(MUTATED))}
# A fixed hypothesis seed: every mutant meets the same examples, so no verdict is luck.
pytest_add_cli_args = [
    "-p", "no:cacheprovider", "-q", "-p", "{ORDER_PLUGIN}", "--hypothesis-seed=0"
]
pytest_add_cli_args_test_selection = ["tests/unit"]
use_git_change_detection = false
# mutmut also stops a run after (its usual time + 1 s) x this, in wall-clock time. Kept
# generous: the check runs at a low priority beside other work, and a run cut short
# counts as caught, so a tight bound would flatter the score.
timeout_multiplier = 30.0
"""

# Why: mutmut runs every unit test that touches a mutated function, stopping at the
# first failure (-x). The policies' validation is touched by hundreds of tests (every
# config builds them), so running the core's own tests first lets a mutant die in a
# second instead of after the whole suite. Only the order changes, never the verdict.
ORDER_PLUGIN_SOURCE = f"""# Written by benchmarks/mutation.py: the core's own tests first.
FIRST = {tuple(FIRST_TESTS)!r}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileScore:
    """One mutated file's verdicts."""

    path: str
    total: int
    caught: int
    timeouts: int  # counted as caught; shown apart, since a slow machine can cause them
    survivors: tuple[str, ...]

    @property
    def score(self) -> float:
        return self.caught / self.total if self.total else 1.0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _lower_priority()
    _ensure_mutmut()
    if args.keep and _package_unchanged():
        # Same code, newer tests: re-test only the mutants that survived last time.
        shutil.copytree(ROOT / "tests", WORK / "tests", ignore=_IGNORE, dirs_exist_ok=True)
        again = [name for path in MUTATED for name in _score(path).survivors]
        print(f"re-testing the {len(again)} survivors of the last run in {WORK.name}/")
        if again:
            _run_mutmut(args.jobs, again)
    else:
        _prepare_work_dir()
        _run_mutmut(args.jobs, [])
    scores = [_score(path) for path in MUTATED]
    explained = _read_survivor_list(SURVIVORS)
    report = _report(scores, explained)
    if args.json is not None:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested at once"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="when device_sdk/ is unchanged since the last run, re-test only its survivors",
    )
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH", help="also write JSON"
    )
    return parser.parse_args(argv)


def _lower_priority() -> None:
    # Why: the check is long and never urgent; tests and editors on the machine come first.
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < 10:
            os.nice(10 - os.getpriority(os.PRIO_PROCESS, 0))
    except OSError:
        pass


def _ensure_mutmut() -> None:
    try:
        if importlib.metadata.version("mutmut").split(".")[0] == "3":
            return
    except importlib.metadata.PackageNotFoundError:
        pass
    print(f"installing {MUTMUT} into {sys.prefix}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", MUTMUT],
        check=True,
    )


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")


def _package_unchanged() -> bool:
    """True when the last run's copy of ``device_sdk/`` matches the checkout's."""
    if not (WORK / "mutants").is_dir():
        return False
    mine = sorted(p.relative_to(ROOT) for p in (ROOT / "device_sdk").rglob("*.py"))
    copied = sorted(p.relative_to(WORK) for p in (WORK / "device_sdk").rglob("*.py"))
    return mine == copied and all((ROOT / p).read_bytes() == (WORK / p).read_bytes() for p in mine)


def _prepare_work_dir() -> None:
    """A fresh copy of the package, the tests and pyproject.toml, plus mutmut's settings."""
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir()
    (WORK / f"{ORDER_PLUGIN}.py").write_text(ORDER_PLUGIN_SOURCE, encoding="utf-8")
    for name in ("device_sdk", "tests", *ALSO_COPIED):
        if (WORK / name).exists():
            continue
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, WORK / name, ignore=_IGNORE)
        else:
            shutil.copy2(ROOT / name, WORK / name)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if "mutmut" in tomllib.loads(pyproject).get("tool", {}):
        raise SystemExit("pyproject.toml has its own [tool.mutmut]; this check writes its own")
    (WORK / "pyproject.toml").write_text(pyproject + MUTMUT_SETTINGS, encoding="utf-8")


def _run_mutmut(jobs: int, names: list[str]) -> None:
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", str(max(1, jobs)), *names]
    shown = " ".join(command[:4]) + (f" <{len(names)} mutants>" if names else "")
    print(f"$ (cd {WORK.relative_to(ROOT)} && {shown})", flush=True)
    # mutmut's own exit status says nothing about the score; the verdicts are read below.
    subprocess.run(command, cwd=WORK, check=False)


def _score(path: str) -> FileScore:
    """Read mutmut's verdicts for one file from its ``.meta`` record."""
    meta = WORK / "mutants" / f"{path}.meta"
    if not meta.is_file():
        raise SystemExit(f"no mutmut results for {path} ({meta} is missing): did mutmut run?")
    exit_codes: dict[str, int | None] = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    unfinished = sorted(n for n, c in exit_codes.items() if c not in CAUGHT_CODES | MISSED_CODES)
    if unfinished:
        raise SystemExit(f"{path}: {len(unfinished)} mutants have no verdict, e.g. {unfinished[0]}")
    caught = sum(code in CAUGHT_CODES for code in exit_codes.values())
    timeouts = sum(code in TIMEOUT_CODES for code in exit_codes.values())
    survivors = tuple(sorted(n for n, c in exit_codes.items() if c in MISSED_CODES))
    return FileScore(
        path=path, total=len(exit_codes), caught=caught, timeouts=timeouts, survivors=survivors
    )


def _read_survivor_list(path: Path) -> dict[str, str]:
    """``mutant name  reason`` lines; ``#`` starts a comment line."""
    explained: dict[str, str] = {}
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, reason = line.strip().partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path.name}:{number}: {name} has no reason")
        explained[name] = reason.strip()
    return explained


def _report(scores: list[FileScore], explained: dict[str, str]) -> dict[str, Any]:
    print()
    print(f"{'file':<30} {'mutants':>7} {'caught':>7} {'timeout':>8} {'survived':>9} {'score':>7}")
    for s in scores:
        mark = "" if s.score >= GOAL else f"   below {GOAL:.0%}"
        print(
            f"{s.path:<30} {s.total:>7} {s.caught:>7} {s.timeouts:>8} {len(s.survivors):>9}"
            f" {s.score:>7.1%}{mark}"
        )
    total = sum(s.total for s in scores)
    caught = sum(s.caught for s in scores)
    timeouts = sum(s.timeouts for s in scores)
    print(
        f"{'all':<30} {total:>7} {caught:>7} {timeouts:>8} {total - caught:>9}"
        f" {caught / total:>7.1%}"
    )

    surviving = {name for s in scores for name in s.survivors}
    unexplained = sorted(surviving - explained.keys())
    stale = sorted(explained.keys() - surviving)
    if unexplained:
        print(f"\n{len(unexplained)} survivors are not in {SURVIVORS.relative_to(ROOT)}:")
        for name in unexplained:
            print(f"  {name}")
        print("(see one with: cd .mutation && ../.venv/bin/mutmut show NAME)")
    if stale:
        print(f"\n{len(stale)} entries of {SURVIVORS.relative_to(ROOT)} no longer survive:")
        for name in stale:
            print(f"  {name}")
    ok = all(s.score >= GOAL for s in scores) and not unexplained and not stale
    print("\nmutation check:", "passed" if ok else "FAILED")
    return {
        "goal": GOAL,
        "files": [
            {
                "path": s.path,
                "mutants": s.total,
                "caught": s.caught,
                "timeouts": s.timeouts,
                "survivors": s.survivors,
            }
            for s in scores
        ],
        "unexplained": unexplained,
        "stale": stale,
        "ok": ok,
    }


if __name__ == "__main__":
    sys.exit(main())
