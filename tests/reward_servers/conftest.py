import pytest
from serverutil import start_server


@pytest.fixture
def server_factory():
    procs = []

    def make(*args):
        proc, url = start_server(*args)
        procs.append(proc)
        return proc, url

    yield make
    for p in procs:
        p.kill()
        p.wait(timeout=10)
