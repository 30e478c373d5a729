"""Every test stops what it starts, checked: a pytest plugin (tests/conftest.py imports its hooks and fixture).

Each process a test starts inherits an environment variable naming its owner: the test (`<session> test <nodeid>`),
or a fixture wider than a test (`<session> session-scoped fixture redis_url`). After a test's teardown no process
owned by that test may be alive; after the session's, no process owned by the session, and no child of ours (what an
explicit `env=` without our variable started) — bar multiprocessing's forkserver and resource tracker, which end with
us. Survivors fail the test (or the session's last test) with their command lines and are killed, so a leak is
reported once, where it happened, and never outlives the run. Linux only (/proc); elsewhere the check is a no-op.
"""
import os
import signal
import time
import uuid

import psutil
import pytest

OWNER = "TESTS_PROCESS_OWNER"                 # not MLPLAT_*: tests clear those to isolate their workspace
SESSION = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
GRACE_S = float(os.environ.get("TESTS_PROCESS_GRACE_S", 15))   # a stopped server's children may take a moment to exit
ENDS_WITH_US = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def owned_by(owner) -> list[psutil.Process]:
    "Live processes (not zombies, not us) whose owner variable passes `owner(value)`, bar our multiprocessing helpers."
    me, found = os.getpid(), []
    for p in psutil.process_iter():
        try:
            if p.pid == me or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if not owner(p.environ().get(OWNER, "")):
                continue
            if p.ppid() == me and any(h in " ".join(p.cmdline()) for h in ENDS_WITH_US):
                continue
            found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stray_children() -> list[psutil.Process]:
    "Our live descendants, whatever their environment, bar our multiprocessing helpers."
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.ppid() == os.getpid() and any(h in " ".join(p.cmdline()) for h in ENDS_WITH_US):
                continue
            found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def survivors(find, grace: float = GRACE_S) -> list[psutil.Process]:
    "What `find()` returns once it stops shrinking to nothing: empty at once when all is well, else after `grace` s."
    end = time.monotonic() + grace
    while (found := find()) and time.monotonic() < end:
        time.sleep(0.2)
    return found


def describe_and_kill(procs: list[psutil.Process]) -> str:
    "One line per process (pid, owner, command line), then SIGKILL to it, and to its group if it leads one of its own."
    lines, our_group = [], os.getpgid(0)
    for p in procs:
        try:
            owner = p.environ().get(OWNER, "?").removeprefix(SESSION + " ")
            lines.append(f"  pid {p.pid} (owner: {owner}): {' '.join(p.cmdline())[:300]}")
            pgid = os.getpgid(p.pid)
            if pgid == p.pid and pgid != our_group: os.killpg(pgid, signal.SIGKILL)
            else: p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return "\n".join(lines)


def enabled() -> bool:
    return os.path.isdir("/proc/self")


# ---- the plugin ----------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    os.environ[OWNER] = f"{SESSION} test {item.nodeid}"
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    "Processes a module- or session-scoped fixture starts belong to the fixture, not to the test that first asked for it."
    if fixturedef.scope == "function":
        return (yield)
    before = os.environ.get(OWNER)
    os.environ[OWNER] = f"{SESSION} {fixturedef.scope}-scoped fixture {fixturedef.argname}"
    try:
        return (yield)
    finally:
        if before is None: os.environ.pop(OWNER, None)
        else: os.environ[OWNER] = before


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        os.environ[OWNER] = f"{SESSION} outside any test"
        if enabled():
            tag = f"{SESSION} test {item.nodeid}"
            left = survivors(lambda: owned_by(tag.__eq__))
            if left:
                pytest.fail(f"{item.nodeid} left {len(left)} process(es) running after its teardown (now killed):\n"
                            + describe_and_kill(left), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def every_process_stopped():
    "Set up first, torn down last: after every other fixture, nothing the session started may still run."
    yield
    if enabled():
        left = survivors(lambda: list({p.pid: p for p in owned_by(lambda o: o.startswith(SESSION)) + stray_children()}.values()))
        if left:
            pytest.fail(f"{len(left)} process(es) outlived the fixtures that started them (now killed):\n"
                        + describe_and_kill(left), pytrace=False)
