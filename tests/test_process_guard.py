"""The process guard (tests/process_guard.py) itself, on a made-up test run: a test that leaves a process running
errors at its teardown and the process is killed; a process a module-scoped fixture stops is nobody's leak; one that
a fixture never stops fails the session's last test."""
import os

import psutil

from helpers import REPO

pytest_plugins = ["pytester"]

LEAKY = """
import subprocess, sys
import pytest

def sleeper(name):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(name, "w").write(str(p.pid))
    return p

@pytest.fixture(scope="module")
def daemon():
    p = sleeper("daemon.pid")
    yield p
    p.kill(); p.wait()

@pytest.fixture(scope="module")
def forgotten():
    yield sleeper("forgotten.pid")

def test_leaks():
    sleeper("leaked.pid")

def test_stops_what_it_starts():
    p = sleeper("stopped.pid")
    p.kill(); p.wait()

def test_uses_the_daemon(daemon):
    assert daemon.poll() is None

def test_uses_what_is_never_stopped(forgotten):
    assert forgotten.poll() is None
"""


def test_a_leak_fails_its_test_and_is_killed(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TESTS_PROCESS_GRACE_S", "1")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")          # a bare pytest starts in a second, not ten
    pytester.makeconftest("from process_guard import every_process_stopped, pytest_fixture_setup, pytest_runtest_setup, "
                          "pytest_runtest_teardown  # noqa: F401")
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(["*test_leaky.py::test_leaks left 1 process(es) running after its teardown (now killed):",
                                 "*(owner: test test_leaky.py::test_leaks): *time.sleep(300)*"])
    result.stdout.fnmatch_lines(["*1 process(es) outlived the fixtures that started them (now killed):",
                                 "*(owner: module-scoped fixture forgotten): *time.sleep(300)*"])
    assert "daemon" not in result.stdout.str() and "test_stops_what_it_starts" not in result.stdout.str().split("short test summary")[-1]
    for name in ("leaked", "forgotten", "daemon", "stopped"):
        pid = int((pytester.path / f"{name}.pid").read_text())
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
