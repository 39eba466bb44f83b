"""tools/run_suites.py: counts read from each tool's report, and a red suite never stops the next."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tools import run_suites
from tools.run_suites import Result, Suite

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10" time="1.5">
</testsuite></testsuites>"""


def test_junit_counts(tmp_path):
    report = tmp_path / "python.xml"
    report.write_text(JUNIT)
    r = run_suites.read_junit(report)
    assert (r.passed, r.failed, r.errors, r.skipped) == (4, 2, 1, 3)


NAMED = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="0" tests="3" time="1.5">
<testcase classname="tests.ml.test_train" name="test_ok" time="0.1"/>
<testcase classname="tests.ml.test_train" name="test_red" time="0.1">
<failure message="AssertionError: cluster did not get back to 2 workers&#10;assert 1 == 2">trace</failure></testcase>
<testcase classname="tests.ml.test_zoo" name="test_last" time="0.1">
<error message="failed on teardown with &quot;AssertionError: processes left: [12]&quot;">trace</error></testcase>
</testsuite></testsuites>"""


def test_failing_tests_are_named_with_their_first_line(tmp_path, monkeypatch, capsys):
    report = tmp_path / "python.xml"
    report.write_text(NAMED)
    r = run_suites.read_junit(report)
    assert r.problems == [
        "failure tests.ml.test_train::test_red: AssertionError: cluster did not get back to 2 workers",
        'error tests.ml.test_zoo::test_last: failed on teardown with "AssertionError: processes left: [12]"',
    ]
    suite = Suite("python", lambda _s: [sys.executable, "-c", "raise SystemExit(1)"], lambda *_: r)
    monkeypatch.setattr(run_suites, "make_suites", lambda paths: [suite])
    assert run_suites.main([]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3:] == [f"python: {problem}" for problem in r.problems] + ["1 passed, 2 failed"]


def test_mypy_closing_lines():
    clean = run_suites.read_mypy(Path(), 0, "Success: no issues found in 12 source files\n")
    assert (clean.passed, clean.failed, clean.ok) == (12, 0, True)
    found = run_suites.read_mypy(Path(), 1, "x.py:1: error: no\nFound 3 errors in 2 files (checked 12 source files)\n")
    assert (found.passed, found.failed, found.note, found.ok) == (10, 2, "3 error(s)", False)
    crashed = run_suites.read_mypy(Path(), 2, "Traceback ...\n")
    assert (crashed.errors, crashed.ok) == (1, False)


def _script(name: str, code: str) -> Suite:
    """A suite that runs ``code`` and counts one pass when it exits 0, one failure otherwise."""
    def read(_scratch: Path, exit_code: int, _out: str) -> Result:
        return Result(passed=1) if exit_code == 0 else Result(failed=1)

    return Suite(name, lambda _s: [sys.executable, "-c", code], read)


def test_red_suite_does_not_stop_the_next(monkeypatch, capsys):
    suites = [_script("red", "raise SystemExit(1)"), _script("green", "pass"), _script("after", "pass")]
    monkeypatch.setattr(run_suites, "make_suites", lambda paths: suites)
    assert run_suites.main([]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "2 passed, 1 failed"
    table = {line.split()[0]: line.split()[1] for line in lines if line.startswith(("red ", "green ", "after "))}
    assert table == {"red": "FAILED", "green": "ok", "after": "ok"}


def test_all_green_exits_zero_and_a_silent_suite_does_not(monkeypatch, capsys):
    monkeypatch.setattr(run_suites, "make_suites", lambda paths: [_script("green", "pass")])
    assert run_suites.main([]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 passed, 0 failed"

    empty = Suite("empty", lambda _s: [sys.executable, "-c", "pass"], lambda *_: Result())
    monkeypatch.setattr(run_suites, "make_suites", lambda paths: [empty])
    assert run_suites.main([]) == 1
    assert "ran no test" in capsys.readouterr().out


def test_unknown_suite_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        run_suites.main(["--only", "nope"])
    assert e.value.code == 2
    assert "unknown suite(s) nope; choose from lint,types,jest,python,server,browser,hub" in capsys.readouterr().err
