"""Run every test suite, keep going past red ones, and print one summary table.

    python tools/run_suites.py                      # every suite
    python tools/run_suites.py --only lint,types    # a selection
    python tools/run_suites.py --only python --paths tests/unit/test_profiles.py

Suites: lint (ruff), types (mypy), jest (the sidebar), python (tests/ without the
server, browser and hub tests), server and browser (each needs a pytest process of its own),
and hub (a real JupyterHub with real Linux accounts: needs root).
Exits 1 if any suite failed, errored or ran nothing; the last line is `N passed, N failed`.
Run it with the project's venv python: ruff, mypy, pytest and jlpm come from that venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
# Not resolved: a venv's python is a symlink, and the venv's bin/ is where jlpm lives.
BIN = Path(sys.executable).parent
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
RUFF = [sys.executable, "-m", "ruff"]
MYPY = [sys.executable, "-m", "mypy"]
LINT_PATHS = ["lepton_lab", "tests", "bench", "tools"]


@dataclass
class Result:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    note: str = ""
    problems: list[str] = field(default_factory=list)  # "kind test-id: first line of its message"

    @property
    def ok(self) -> bool:
        return not (self.failed or self.errors)


# A reader turns (scratch dir with report files, exit code, captured stdout) into counts.
Reader = Callable[[Path, int, str], Result]


@dataclass
class Suite:
    name: str
    argv: Callable[[Path], list[str]]  # the command line, given the scratch dir
    read: Reader
    cwd: Path = ROOT
    capture: bool = False  # echo stdout and also hand it to the reader


# --- reading results ------------------------------------------------------------------


def read_junit(report: Path) -> Result:
    """Counts from a pytest `--junitxml` file (one or more <testsuite> elements)."""
    root = ET.parse(report).getroot()
    r = Result()
    for s in [root] if root.tag == "testsuite" else root.iter("testsuite"):
        tests, failed, errors, skipped = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        r.passed += tests - failed - errors - skipped
        r.failed += failed
        r.errors += errors
        r.skipped += skipped
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            for bad in case.findall(kind):
                test = "::".join(x for x in (case.get("classname", ""), case.get("name", "")) if x)
                message = (bad.get("message") or bad.text or "").strip().splitlines()
                r.problems.append(f"{kind} {test}: {message[0][:300] if message else '(no message)'}")
    return r


def pytest_reader(report_name: str) -> Reader:
    def read(scratch: Path, code: int, _out: str) -> Result:
        report = scratch / report_name
        if not report.exists():
            return Result(errors=1, note=f"pytest exit {code}, no report")
        r = read_junit(report)
        if code == 5:
            r.note = "no tests collected"
        elif code not in (0, 1):
            r.note = f"pytest exit {code}"
        return r

    return read


def read_jest(scratch: Path, code: int, _out: str) -> Result:
    report = scratch / "jest.json"
    if not report.exists():
        return Result(errors=1, note=f"jest exit {code}, no report")
    data = json.loads(report.read_text())
    return Result(
        passed=data["numPassedTests"],
        failed=data["numFailedTests"],
        errors=data["numRuntimeErrorTestSuites"],
        skipped=data["numPendingTests"] + data.get("numTodoTests", 0),
    )


def read_ruff(scratch: Path, code: int, _out: str) -> Result:
    """One check per file: a file passes when ruff finds nothing in it."""
    report = scratch / "ruff.json"
    if not report.exists():
        return Result(errors=1, note=f"ruff exit {code}, no report")
    findings = json.loads(report.read_text())
    for f in findings:
        where = f"{os.path.relpath(f['filename'], ROOT)}:{f['location']['row']}:{f['location']['column']}"
        print(f"{where}: {f['code']} {f['message']}")
    listed = subprocess.run([*RUFF, "check", "--show-files", *LINT_PATHS],
                            cwd=ROOT, capture_output=True, text=True)
    checked = set(listed.stdout.split())
    bad = {f["filename"] for f in findings}
    return Result(passed=len(checked - bad), failed=len(bad),
                  note=f"{len(findings)} finding(s)" if findings else "")


MYPY_CLEAN = re.compile(r"^Success: no issues found in (\d+) source files?$", re.M)
MYPY_FOUND = re.compile(r"^Found (\d+) errors? in (\d+) files? \(checked (\d+) source files?\)$", re.M)


def read_mypy(_scratch: Path, code: int, out: str) -> Result:
    """One check per source file, from mypy's closing line."""
    if m := MYPY_CLEAN.search(out):
        return Result(passed=int(m[1]))
    if m := MYPY_FOUND.search(out):
        errors, files, checked = (int(g) for g in m.groups())
        return Result(passed=checked - files, failed=files, note=f"{errors} error(s)")
    return Result(errors=1, note=f"mypy exit {code}, no summary line")


# --- the suites -----------------------------------------------------------------------


def pytest_suite(name: str, targets: list[str]) -> Suite:
    report = f"{name}.xml"
    return Suite(name, lambda s: [*PYTEST, f"--junitxml={s / report}", *targets], pytest_reader(report))


def hub_suite(targets: list[str]) -> Suite:
    """The JupyterHub tests: they create Linux accounts, so a run without root fails and says why."""
    suite = pytest_suite("hub", targets)
    if os.geteuid() == 0:
        return suite
    read = suite.read

    def needs_root(scratch: Path, code: int, out: str) -> Result:
        r = read(scratch, code, out)
        r.note = "needs root: it creates Linux accounts"
        return r

    suite.read = needs_root
    return suite


def make_suites(paths: list[str] | None) -> list[Suite]:
    """Every suite in run order; `paths` replaces the targets of the pytest suites."""
    return [
        Suite("lint", lambda s: [*RUFF, "check", "--output-format", "json", "--output-file", str(s / "ruff.json"),
                                 *LINT_PATHS], read_ruff),
        Suite("types", lambda _s: [*MYPY, "lepton_lab"], read_mypy, capture=True),
        Suite("jest", lambda s: ["jlpm", "test", "--json", f"--outputFile={s / 'jest.json'}"], read_jest,
              cwd=ROOT / "extension"),
        pytest_suite("python", paths or ["tests", "--ignore=tests/server", "--ignore=tests/browser",
                                         "--ignore=tests/hub"]),
        pytest_suite("server", paths or ["tests/server"]),
        pytest_suite("browser", paths or ["tests/browser"]),
        hub_suite(paths or ["tests/hub"]),
    ]


# --- running --------------------------------------------------------------------------


def run(suite: Suite, scratch: Path) -> Result:
    argv = suite.argv(scratch)
    print(f"\n=== {suite.name}: {' '.join(argv)}", flush=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.monotonic()
    out = ""
    try:
        if suite.capture:
            with subprocess.Popen(argv, cwd=suite.cwd, env=env, stdout=subprocess.PIPE, text=True) as p:
                assert p.stdout is not None
                for line in p.stdout:
                    print(line, end="", flush=True)
                    out += line
            code = p.returncode
        else:
            code = subprocess.run(argv, cwd=suite.cwd, env=env).returncode
    except FileNotFoundError as e:
        return Result(errors=1, seconds=time.monotonic() - start, note=f"cannot run {e.filename}")
    try:
        result = suite.read(scratch, code, out)
    except (ValueError, KeyError, ET.ParseError) as e:
        result = Result(errors=1, note=f"unreadable report: {e}")
    if code != 0 and result.ok:
        result.errors, result.note = 1, result.note or f"exit {code}"
    elif not result.passed and result.ok:
        result.errors, result.note = 1, result.note or "ran no test"
    result.seconds = time.monotonic() - start
    return result


def table(results: dict[str, Result]) -> str:
    head = ("suite", "result", "passed", "failed", "errors", "skipped", "time", "")
    rows = [head] + [(name, "ok" if r.ok else "FAILED", str(r.passed), str(r.failed), str(r.errors), str(r.skipped),
                      f"{r.seconds:.0f}s", r.note) for name, r in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    left = {0, 1, 7}
    return "\n".join(
        "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in make_suites(None)]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated suites to run (of {','.join(names)})")
    parser.add_argument("--skip", help="comma-separated suites not to run")
    parser.add_argument("--paths", nargs="+", metavar="PATH", help="test paths for the one pytest suite selected")
    args = parser.parse_args(argv)

    def names_of(value: str | None) -> list[str]:
        chosen = [n.strip() for n in (value or "").split(",") if n.strip()]
        if unknown := [n for n in chosen if n not in names]:
            parser.error(f"unknown suite(s) {','.join(unknown)}; choose from {','.join(names)}")
        return chosen

    only, skip = names_of(args.only), names_of(args.skip)
    suites = [s for s in make_suites(args.paths) if (not only or s.name in only) and s.name not in skip]
    if not suites:
        parser.error("no suite selected")
    if args.paths and sum(s.name in ("python", "server", "browser", "hub") for s in suites) != 1:
        parser.error("--paths needs exactly one of python,server,browser,hub in the selection")

    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="lepton-suites-") as tmp:
        for suite in suites:
            scratch = Path(tmp, suite.name)
            scratch.mkdir()
            try:
                results[suite.name] = run(suite, scratch)
            except KeyboardInterrupt:
                results[suite.name] = Result(errors=1, note="interrupted")
                break

    print("\n" + table(results))
    for name, r in results.items():
        for problem in r.problems:
            print(f"{name}: {problem}")
    passed = sum(r.passed for r in results.values())
    failed = sum(r.failed + r.errors for r in results.values())
    print(f"{passed} passed, {failed} failed")
    return 0 if all(r.ok for r in results.values()) and len(results) == len(suites) else 1


if __name__ == "__main__":
    sys.exit(main())
