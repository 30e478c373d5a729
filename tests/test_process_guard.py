"""The process guard (tests/process_guard.py) itself, on a made-up test run: a test that leaves a process running
errors at its teardown and the process is killed — whether it still carries our environment, was started without
it, or left our process tree; a process a wider fixture starts is not the test's; one that a fixture never stops
fails the session's last test."""
import os

import psutil

from helpers import REPO

pytest_plugins = ["pytester"]

LEAKY = """
import os, subprocess, sys
import pytest

SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]

def sleeper(name, **kw):
    p = subprocess.Popen(SLEEP, **kw)
    open(name, "w").write(str(p.pid))
    return p

@pytest.fixture(scope="session")
def daemon():
    p = sleeper("daemon.pid")
    yield p
    p.kill(); p.wait()

@pytest.fixture(scope="module")
def forgotten():
    yield sleeper("forgotten.pid")

def test_leaks():
    sleeper("leaked.pid")

def test_leaks_without_our_environment():
    sleeper("bare.pid", env={"PATH": os.environ["PATH"]})

def test_leaks_a_daemon():
    code = f"import subprocess; print(subprocess.Popen({SLEEP!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True).pid)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    open("orphan.pid", "w").write(out.strip())          # its parent has exited: it is no longer our descendant

def test_stops_what_it_starts(daemon):
    p = sleeper("stopped.pid")
    p.kill(); p.wait()

def test_uses_the_daemon(daemon):
    assert daemon.poll() is None

def test_uses_what_is_never_stopped(forgotten, daemon):
    assert forgotten.poll() is None
"""


def test_a_leak_fails_its_test_and_is_killed(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TESTS_PROCESS_GRACE_S", "1")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")          # a bare pytest starts in a second, not ten
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "process_guard")
    result.assert_outcomes(passed=6, errors=4)
    out = result.stdout.str()
    for test in ("test_leaks", "test_leaks_without_our_environment", "test_leaks_a_daemon"):
        result.stdout.fnmatch_lines([f"*test_leaky.py::{test} left 1 process(es) running after its teardown (now killed):",
                                     f"*(owner: test test_leaky.py::{test}): *time.sleep(300)*"])
    result.stdout.fnmatch_lines(["*1 process(es) outlived the fixtures that started them (now killed):",
                                 "*(owner: module-scoped fixture forgotten): *time.sleep(300)*"])
    assert "::test_stops_what_it_starts left" not in out and "::test_uses_the_daemon left" not in out
    assert "fixture daemon" not in out
    for name in ("leaked", "bare", "orphan", "forgotten", "daemon", "stopped"):
        pid = int((pytester.path / f"{name}.pid").read_text())
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
