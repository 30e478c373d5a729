"""Every test stops what it starts, checked: a pytest plugin (tests/conftest.py registers it).

After a test's teardown, no process the test started may still run. Two ways to know what it started:
- our descendants: any that is not a wider fixture's (started while a module- or session-scoped fixture was set
  up, or a descendant of one) belongs to the test, since its function-scoped fixtures are gone by then;
- the environment: each process inherits a variable naming its owner (`<session> test <nodeid>`,
  `<session> session-scoped fixture redis_url`), which still tells when a process left our tree (its parent
  exited and it was re-parented) — unless it rewrote its environment, as setproctitle does (Redis, PostgreSQL).
After the session's last teardown, nothing may be left at all. Survivors fail the test (an error at its teardown,
or at the session's last one) with their command lines, and are killed: a leak is reported once, where it
happened, and never outlives the run. multiprocessing's forkserver and resource tracker end with us and do not
count. Linux only (/proc); elsewhere the check is a no-op.
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
FIXTURE_OWNED: set[int] = set()               # pids that a module- or session-scoped fixture's setup started


def alive(p: psutil.Process) -> bool:
    "Running (not a zombie), and not one of our multiprocessing helpers."
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return not (p.ppid() == os.getpid() and any(h in " ".join(p.cmdline()) for h in ENDS_WITH_US))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def owner_of(p: psutil.Process) -> str:
    try:
        return p.environ().get(OWNER, "")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def descendants() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def fixture_owned(p: psutil.Process) -> bool:
    try:
        return p.pid in FIXTURE_OWNED or any(a.pid in FIXTURE_OWNED for a in p.parents())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def left_by_test(tag: str) -> list[psutil.Process]:
    "Live processes the test tagged `tag` started: our descendants that no wider fixture owns, and any carrying the tag."
    found = {pid: p for pid, p in descendants().items() if alive(p) and not fixture_owned(p)}
    for p in psutil.process_iter():
        if p.pid not in found and p.pid != os.getpid() and owner_of(p) == tag and alive(p):
            found[p.pid] = p
    return list(found.values())


def left_by_session() -> list[psutil.Process]:
    "Live processes the session started: all our descendants, and any carrying the session's tag."
    found = {pid: p for pid, p in descendants().items() if alive(p)}
    for p in psutil.process_iter():
        if p.pid not in found and p.pid != os.getpid() and owner_of(p).startswith(SESSION) and alive(p):
            found[p.pid] = p
    return list(found.values())


def survivors(find, grace: float = GRACE_S) -> list[psutil.Process]:
    "What `find()` returns once it stops shrinking to nothing: empty at once when all is well, else after `grace` s."
    end = time.monotonic() + grace
    while (found := find()) and time.monotonic() < end:
        time.sleep(0.2)
    return found


def describe_and_kill(procs: list[psutil.Process], started_by: str) -> str:
    "One line per process (pid, owner, command line), then SIGKILL to it, and to its group if it leads one of its own."
    lines, our_group = [], os.getpgid(0)
    for p in procs:
        try:
            owner = owner_of(p).removeprefix(SESSION + " ") or started_by
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
    "What a module- or session-scoped fixture starts is the fixture's, not the test's that first asked for it."
    if fixturedef.scope == "function" or not enabled():
        return (yield)
    before, tag = set(descendants()), os.environ.get(OWNER)
    os.environ[OWNER] = f"{SESSION} {fixturedef.scope}-scoped fixture {fixturedef.argname}"
    try:
        return (yield)
    finally:
        FIXTURE_OWNED.update(set(descendants()) - before)
        if tag is None: os.environ.pop(OWNER, None)
        else: os.environ[OWNER] = tag


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        tag = f"{SESSION} test {item.nodeid}"
        os.environ[OWNER] = f"{SESSION} outside any test"
        left = survivors(lambda: left_by_test(tag)) if enabled() else []
        if left:
            pytest.fail(f"{item.nodeid} left {len(left)} process(es) running after its teardown (now killed):\n"
                        + describe_and_kill(left, f"test {item.nodeid}"), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def every_process_stopped():
    "Set up first, torn down last: after every other fixture, nothing the session started may still run."
    yield
    left = survivors(left_by_session) if enabled() else []
    if left:
        pytest.fail(f"{len(left)} process(es) outlived the fixtures that started them (now killed):\n"
                    + describe_and_kill(left, "a fixture"), pytrace=False)
