"""Pytest hooks and fixtures of the conformance suite.

Fixtures a plugin author may override (in a ``conftest.py``):

``layer_factory``
    A callable ``factory(**options) -> ChannelLayer``. The suite passes layer
    options such as ``expiry=0.5``, ``group_expiry=1``, ``capacity=3`` or
    ``channel_capacity={...}`` to test time- and capacity-dependent rules quickly.
    Every layer it returns must belong to one deployment: two layers from one
    factory act as two processes sharing one store. Default:
    ``layers.from_url(--layer-url, **options)``; for a backend that is not
    ``cross_process`` (``memory://``), every later layer of one factory shares the
    first layer's backend options, hence its in-process store.
``layer_url``
    The URL given with ``--layer-url`` (or ``$LAYERS_CONFORMANCE_URL``). Tests that
    start other OS processes need it to build an equivalent layer there; without
    one they skip, saying so.
``layer``
    One layer with default options.
``conformance_known_bugs``
    A mapping ``{test function name: reason}``. Each named test is marked
    ``xfail(strict=True)``: it must keep failing until the bug is fixed, and the
    reason shows in the report.

What a backend cannot do
    Skip or replace a test. Tests skip only on a capability the backend declares it
    lacks (``Backend.capabilities``), with the reason shown. The plugin refuses to
    run (a usage error) when a test of the suite is collected from anywhere but
    the shipped modules or with a different body, or when any module or conftest
    defines a function with the name of a conformance test; it stops the run (a
    usage error too) before the first suite test that gets an override of a
    fixture other than the four above.

Profiles
    ``--conformance-profile fast`` (the default; ``$LAYERS_CONFORMANCE_PROFILE``)
    keeps the whole suite to about half a minute on ``memory://``: few Hypothesis
    examples, no shrinking, short runs. ``--conformance-profile thorough`` is for
    nightly runs: many Hypothesis examples with shrinking, long runs and large
    orderings. A rule opts in three ways: :func:`hypothesis_settings` gives the
    profile's Hypothesis settings (registered as the Hypothesis profiles
    ``layers-conformance-fast`` and ``layers-conformance-thorough``);
    :func:`scaled` picks a size (``scaled(2_000, 100_000)``); :func:`thorough_only`
    marks a rule that runs only in the thorough profile (it skips, saying so, in
    the fast one).

Collection
    When the plugin is enabled and the command line does not already name the
    suite, the plugin adds the shipped test package to the run, so enabling the
    plugin in a ``conftest.py`` is enough. ``--no-conformance-suite`` turns that off.

Each test gets a fresh event loop. Tests are plain functions wrapped by
:func:`async_test`, so the suite needs no async pytest plugin.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import pkgutil
import types
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, Protocol

import pytest

from layers.core.backend import Capability
from layers.core.layer import ChannelLayer

__all__ = [
    "OVERRIDABLE_FIXTURES",
    "PROFILES",
    "LayerFactory",
    "async_test",
    "conformance_known_bugs",
    "hypothesis_settings",
    "layer",
    "layer_factory",
    "layer_url",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_setup",
    "requires",
    "scaled",
    "settings",
    "thorough_only",
]

P = ParamSpec("P")

PACKAGE = "layers.conformance_tests"
PACKAGE_DIR = Path(__file__).resolve().parent

#: The run profiles: ``fast`` (the default) and ``thorough`` (nightly).
PROFILES = ("fast", "thorough")

#: The fixtures a backend's test suite may override; any other override is refused.
OVERRIDABLE_FIXTURES = frozenset({"layer_factory", "layer_url", "layer", "conformance_known_bugs"})
#: The suite's own fixtures, which may not be overridden. Each records on the test it
#: runs for that it ran (:func:`_ran`): a suite test whose setup is done without that
#: record got someone else's fixture of that name, and the run stops.
_INTERNAL_FIXTURES = frozenset({"_conformance_gate"})
_RAN_KEY = pytest.StashKey[set[str]]()


class _Settings:
    """Run-wide timing settings, set from the command line when pytest configures."""

    #: The longest any single conformance test may run before it fails as hung.
    test_timeout: float = float(os.environ.get("LAYERS_CONFORMANCE_TIMEOUT", "60"))
    #: How long "nothing arrives" is waited for (raise it for poll-only backends).
    quiet: float = float(os.environ.get("LAYERS_CONFORMANCE_QUIET", "0.25"))
    #: How long a message that must arrive may take.
    wait: float = float(os.environ.get("LAYERS_CONFORMANCE_WAIT", "10"))
    #: ``fast`` or ``thorough`` (see :data:`PROFILES`).
    profile: str = os.environ.get("LAYERS_CONFORMANCE_PROFILE", "fast")

    @property
    def thorough(self) -> bool:
        """True in the thorough (nightly) profile."""
        return self.profile == "thorough"


settings = _Settings()


class LayerFactory(Protocol):
    """Makes layers of the deployment under test: ``factory(**layer_options)``."""

    def __call__(self, **options: Any) -> ChannelLayer:
        """Return a new layer of the deployment, made with ``options``."""
        ...


def async_test(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an ``async def`` test in a fresh event loop, failing it after the test timeout."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(settings.test_timeout):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


def requires(*capabilities: Capability) -> pytest.MarkDecorator:
    """Mark a test as needing backend capabilities; it skips, with the reason, without them."""
    return pytest.mark.requires(*capabilities)


def thorough_only() -> pytest.MarkDecorator:
    """Mark a rule that runs only in the thorough profile (it skips, saying so, otherwise)."""
    return pytest.mark.conformance_thorough


def scaled(fast: int, thorough: int) -> int:
    """Return ``fast`` in the fast profile and ``thorough`` in the thorough one."""
    return thorough if settings.thorough else fast


def _register_hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, Phase
    from hypothesis import settings as hypothesis

    common: dict[str, Any] = {
        "deadline": None,  # real time and real stores: a slow step is not a bug
        "database": None,  # never write .hypothesis/ into the author's project
        "suppress_health_check": list(HealthCheck),
    }
    hypothesis.register_profile(
        "layers-conformance-fast",
        max_examples=10,
        derandomize=True,
        print_blob=False,
        # Shrinking a failure of a stateful rule on real time can take minutes;
        # the fast profile reports the failing steps as found.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        **common,
    )
    hypothesis.register_profile(
        "layers-conformance-thorough", max_examples=200, print_blob=True, **common
    )


def hypothesis_settings(**overrides: Any) -> Any:
    """Return the current profile's Hypothesis settings, with ``overrides`` applied."""
    from hypothesis import settings as hypothesis

    try:
        parent = hypothesis.get_profile(f"layers-conformance-{settings.profile}")
    except Exception:  # hypothesis raises InvalidArgument for an unregistered profile
        _register_hypothesis_profiles()
        parent = hypothesis.get_profile(f"layers-conformance-{settings.profile}")
    return hypothesis(parent, **overrides)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the suite's options (``--layer-url``, ``--conformance-profile`` and others)."""
    group = parser.getgroup("layers", "channel-layers conformance suite")
    group.addoption(
        "--layer-url",
        default=os.environ.get("LAYERS_CONFORMANCE_URL"),
        help="URL of the layer under test, e.g. redis://localhost:6379/0 "
        "(default: $LAYERS_CONFORMANCE_URL)",
    )
    group.addoption(
        "--conformance-quiet",
        type=float,
        default=None,
        help="seconds to wait when checking that nothing arrives "
        "(default $LAYERS_CONFORMANCE_QUIET or 0.25; raise it for poll-only backends)",
    )
    group.addoption(
        "--conformance-profile",
        choices=PROFILES,
        default=None,
        help="fast (default: about half a minute on memory://) or thorough (nightly: "
        "many Hypothesis examples with shrinking, long runs); "
        "default $LAYERS_CONFORMANCE_PROFILE or fast",
    )
    group.addoption(
        "--no-conformance-suite",
        action="store_true",
        default=False,
        help="do not add the conformance test modules to the run automatically",
    )


def _suite_named(config: pytest.Config) -> bool:
    for arg in config.args:
        name = str(arg).split("::")[0]
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            return True
        try:
            path = Path(name).resolve()
        except OSError:  # pragma: no cover - odd argument
            continue
        if path == PACKAGE_DIR or PACKAGE_DIR in path.parents or path in PACKAGE_DIR.parents:
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers, read the timing options and add the suite to the run."""
    config.addinivalue_line(
        "markers", "requires(*capabilities): needs backend capabilities (skips without)"
    )
    config.addinivalue_line(
        "markers", "conformance_thorough: runs only with --conformance-profile thorough"
    )
    quiet = config.getoption("--conformance-quiet", default=None)
    if quiet is not None:
        settings.quiet = float(quiet)
    profile = config.getoption("--conformance-profile", default=None)
    if profile is not None:
        settings.profile = profile
    if settings.profile not in PROFILES:
        raise pytest.UsageError(
            f"conformance profile {settings.profile!r} is unknown; use one of {', '.join(PROFILES)}"
        )
    if settings.thorough and "LAYERS_CONFORMANCE_TIMEOUT" not in os.environ:
        settings.test_timeout = 600.0  # long runs: 100,000-message orderings on a network
    _register_hypothesis_profiles()
    if config.getoption("--no-conformance-suite", default=False):
        return
    _check_layer_url(config)
    if not _suite_named(config):
        config.args.append(str(PACKAGE_DIR))


def _check_layer_url(config: pytest.Config) -> None:
    """Stop the run at once (one line) when ``--layer-url`` cannot build a layer."""
    url = config.getoption("--layer-url", default=None)
    if not isinstance(url, str) or not url:
        return
    from layers.core.config import from_url

    try:
        from_url(url)
    except (ValueError, ImportError) as exc:  # ConfigurationError, MissingDriver
        from layers.conformance_tests.cli import shown_url

        raise pytest.UsageError(f"--layer-url {shown_url(url)}: {exc}") from None


@pytest.fixture
def layer_url(request: pytest.FixtureRequest) -> str | None:
    """The ``--layer-url`` option (None when not given)."""
    value = request.config.getoption("--layer-url", default=None)
    return value if isinstance(value, str) and value else None


@pytest.fixture
def layer_factory(layer_url: str | None) -> LayerFactory:
    """Make layers from ``--layer-url``; override this fixture to test your own layer.

    Layers of a backend without ``cross_process`` share the first layer's backend
    options (its in-process store), so two layers act as two processes of one
    deployment.
    """
    if layer_url is None:
        pytest.fail(
            "the conformance suite needs a layer: pass --layer-url URL or override "
            "the layer_factory fixture"
        )
    from layers.core.config import from_url

    made: list[ChannelLayer] = []

    def factory(**options: Any) -> ChannelLayer:
        new = from_url(layer_url, **options)
        if made and Capability.CROSS_PROCESS not in new.capabilities:
            new._backend_options = made[0]._backend_options
        made.append(new)
        return new

    return factory


@pytest.fixture
def layer(layer_factory: LayerFactory) -> ChannelLayer:
    """A layer with default options. Tests open and close it in their own event loop."""
    return layer_factory()


@pytest.fixture
def conformance_known_bugs() -> Mapping[str, str]:
    """Known bugs of the backend under test: ``{test name: reason}``, run as strict xfail."""
    return {}


@pytest.fixture(autouse=True)
def _conformance_gate(request: pytest.FixtureRequest) -> None:
    """Apply capability skips and declared known bugs to the suite's own tests."""
    item = request.node
    _ran(item, "_conformance_gate")
    if not isinstance(item, pytest.Function) or not _is_suite_item(item):
        return
    known: Mapping[str, str] = request.getfixturevalue("conformance_known_bugs")
    reason = known.get(item.originalname)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=f"known bug: {reason}", strict=True))
    needed = [c for mark in item.iter_markers("requires") for c in mark.args]
    if not needed:
        return
    factory: LayerFactory = request.getfixturevalue("layer_factory")
    declared = factory().capabilities
    missing = sorted(str(Capability(c)) for c in needed if Capability(c) not in declared)
    if missing:
        pytest.skip(f"backend lacks capability {', '.join(missing)} (not declared in capabilities)")


def _is_suite_item(item: pytest.Function) -> bool:
    module = getattr(item, "module", None)
    return module is not None and module.__name__.startswith(PACKAGE + ".test_")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a suite test whose ``requires`` marker names an unknown capability.

    Skip a rule marked :func:`thorough_only` outside the thorough profile.
    """
    for mark in item.iter_markers("requires"):
        for capability in mark.args:
            Capability(capability)
    if not settings.thorough and item.get_closest_marker("conformance_thorough"):
        pytest.skip("runs only in the thorough profile (--conformance-profile thorough)")


def _ran(item: pytest.Item, fixture: str) -> None:
    """Record that the suite's own ``fixture`` ran for ``item``."""
    item.stash.setdefault(_RAN_KEY, set()).add(fixture)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Stop the run (a usage error) when one of the suite's own fixtures was overridden.

    Only public pytest API: the fixture names a test requests (``item.fixturenames``)
    and what the suite's fixtures recorded in ``item.stash`` while they ran.
    """
    if not isinstance(item, pytest.Function) or not _is_suite_item(item):
        return
    ran = item.stash.get(_RAN_KEY, set())
    overridden = sorted(_INTERNAL_FIXTURES.intersection(item.fixturenames) - ran)
    if overridden:
        pytest.exit(
            f"the conformance suite cannot be overridden: {item.nodeid}: fixture "
            f"{overridden[0]!r} is overridden by a conftest or plugin (only "
            f"{', '.join(sorted(OVERRIDABLE_FIXTURES))} may be)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_report_header(config: pytest.Config) -> str:
    """Say which conformance profile runs, and how to pick the other."""
    other = "fast" if settings.thorough else "thorough"
    return (
        f"channel-layers conformance: profile {settings.profile} "
        f"(--conformance-profile {other} for the other)"
    )


# -- anti-override ---------------------------------------------------------------------


@functools.cache
def shipped_tests() -> dict[str, types.CodeType]:
    """Return every test function of the shipped modules: name -> code object."""
    import importlib

    found: dict[str, types.CodeType] = {}
    for info in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("test_") and callable(obj):
                func = inspect.unwrap(obj)
                code = getattr(func, "__code__", None)
                if code is not None and getattr(obj, "__module__", "") == module.__name__:
                    found[name] = code
    return found


def _override_problems(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    canonical = shipped_tests()
    problems: list[str] = []
    for plugin in config.pluginmanager.get_plugins():
        if not isinstance(plugin, types.ModuleType) or plugin.__name__.startswith(PACKAGE):
            continue
        clash = sorted(set(vars(plugin)) & set(canonical))
        if clash:
            problems.append(f"{plugin.__name__} defines conformance test(s) {', '.join(clash)}")
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        name = item.originalname
        if name not in canonical:
            continue
        code = getattr(inspect.unwrap(item.obj), "__code__", None)
        if item.module is None or not item.module.__name__.startswith(PACKAGE + ".test_"):
            problems.append(f"{item.nodeid} redefines the conformance test {name}")
        elif code is not canonical[name]:
            problems.append(f"{item.nodeid} has been replaced at run time")
    return problems


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Refuse a run in which a conformance test was overridden (fixtures: at each call)."""
    problems = _override_problems(config, items)
    if problems:
        listing = "\n  ".join(dict.fromkeys(problems))
        raise pytest.UsageError(
            "the conformance suite cannot be overridden:\n  "
            + listing
            + "\nDeclare missing features in Backend.capabilities (the test skips with its "
            "reason) and known bugs with the conformance_known_bugs fixture (strict xfail)."
        )
