import pytest

from _tiny import ARCHS, tiny_lm  # noqa: F401  (sets the test environment on import)


@pytest.fixture(params=ARCHS)
def arch_lm(request):
    return tiny_lm(request.param)


@pytest.fixture(scope="session")
def smollm2():
    import avec

    return avec.load("smollm2")


from _browser import browser, page  # noqa: E402,F401  (real-browser fixtures for page tests)
