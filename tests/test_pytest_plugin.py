"""The pytest plugin: its fixtures, marker and ini options, run in pytest's own pytester."""

from __future__ import annotations

from pathlib import Path

import pytest

import trio_gearman.pytest_plugin

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_example_pytest.py"
STRICT = """
[pytest]
addopts = --strict-markers --strict-config
filterwarnings = error
"""


class Inner:
    """Runs pytest inside the test with the plugin loaded, as its entry point would."""

    def __init__(self, pytester: pytest.Pytester, registered: bool) -> None:
        self.pytester = pytester
        self._registered = registered

    def run(self, *args: str) -> pytest.RunResult:
        """Run in a fresh interpreter, as a user's pytest would.

        Not in this process: there, trio_gearman is already imported, and when this
        suite runs under the ``pytest`` script (not ``python -m pytest``) the inner
        run's ``filterwarnings = error`` turns pytest's "already imported, cannot be
        rewritten" warning into an error.
        """
        return self.run_subprocess(*args)

    def run_subprocess(self, *args: str) -> pytest.RunResult:
        """Run in a fresh interpreter."""
        if not self._registered:
            args = ("-p", "trio_gearman.pytest_plugin", *args)
        return self.pytester.runpytest_subprocess(*args)


@pytest.fixture
def inner(pytester: pytest.Pytester, pytestconfig: pytest.Config) -> Inner:
    """pytest runs with the plugin, whether or not its entry point is installed."""
    registered = pytestconfig.pluginmanager.is_registered(trio_gearman.pytest_plugin)
    return Inner(pytester, registered)


def test_a_users_test_file_passes(pytester: pytest.Pytester, inner: Inner) -> None:
    pytester.makeini(STRICT)
    pytester.makepyfile(test_example=EXAMPLE.read_text())
    result = inner.run()
    result.assert_outcomes(passed=7)


def test_a_failing_job_reads_well(pytester: pytest.Pytester, inner: Inner) -> None:
    pytester.makeini(STRICT + "trio_mode = true\n")
    pytester.makepyfile(
        """
        import pytest
        from trio_gearman import JobException
        from trio_gearman.testing import JobOutcome

        async def resize(job):
            raise ValueError("image 42 is corrupt")

        async def test_result(gearman_worker, gearman_client):
            gearman_worker.register("resize", resize)
            assert await gearman_client.submit("resize", b"42") == b"ok"

        async def test_history(gearman_server, gearman_worker, gearman_client):
            gearman_worker.register("resize", resize)
            with pytest.raises(JobException):
                await gearman_client.submit("resize", b"42")
            (record,) = gearman_server.history
            assert record.outcome is JobOutcome.COMPLETED
        """
    )
    result = inner.run()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*JobException: *ValueError: image 42 is corrupt*resize*",
            "*assert <JobOutcome.EXCEPTION: 'exception'> is <JobOutcome.COMPLETED: 'completed'>",
            "*JobRecord(handle='H:localhost:1', function='resize', *data=b'42'*"
            "outcome=<JobOutcome.EXCEPTION: 'exception'>, "
            "result=b'ValueError: image 42 is corrupt'*",
        ]
    )


def test_options_from_ini_and_markers(pytester: pytest.Pytester, inner: Inner) -> None:
    pytester.makeini(
        STRICT
        + "trio_mode = true\n"
        + "gearman_job_retries = 3\n"
        + "gearman_exceptions = true\n"
        + "gearman_job_handle_prefix = H:ini\n"
    )
    pytester.makepyfile(
        """
        import pytest

        def options(server):
            c = server.config
            return c.job_retries, c.worker_wakeup, c.exceptions, c.job_handle_prefix

        async def test_ini(gearman_server):
            assert options(gearman_server) == (3, 0, True, b"H:ini")

        @pytest.mark.gearman_server(worker_wakeup=1, job_retries=5)
        class TestMarkers:
            @pytest.mark.gearman_server(job_retries=2)
            async def test_the_closest_marker_wins(self, gearman_server):
                assert options(gearman_server) == (2, 1, True, b"H:ini")

            async def test_the_factory_takes_them_too(self, gearman_servers):
                first, second = await gearman_servers(2)
                (third,) = await gearman_servers(exceptions=False)
                assert len({first.port, second.port, third.port}) == 3
                assert options(first) == options(second) == (5, 1, True, b"H:ini")
                assert options(third) == (5, 1, False, b"H:ini")
        """
    )
    result = inner.run()
    result.assert_outcomes(passed=3)


def test_a_bad_marker_is_reported(pytester: pytest.Pytester, inner: Inner) -> None:
    pytester.makeini(STRICT + "trio_mode = true\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gearman_server(retries=2)
        async def test_typo(gearman_server):
            pass
        """
    )
    result = inner.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*gearman_server takes the keyword options *; not retries"])


def test_the_fixtures_work_in_anyio_tests(pytester: pytest.Pytester, inner: Inner) -> None:
    pytester.makeini(STRICT)
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_round_trip(gearman_server, gearman_worker, gearman_client):
            async def reverse(job):
                return job.data[::-1]

            gearman_worker.register("reverse", reverse)
            assert await gearman_client.submit("reverse", b"abc") == b"cba"
            assert gearman_server.history[0].outcome == "completed"
        """
    )
    result = inner.run()
    result.assert_outcomes(passed=2)


def test_tests_without_the_fixtures_get_nothing(pytester: pytest.Pytester, inner: Inner) -> None:
    pytester.makeini(STRICT)
    pytester.makepyfile(
        """
        import sys

        def test_untouched(request):
            markers = request.config.getini("markers")
            assert any(marker.startswith("gearman_server(") for marker in markers)
            assert not [name for name in request.fixturenames if "gearman" in name]
            assert "trio_gearman.testing" not in sys.modules
        """
    )
    result = inner.run_subprocess()
    result.assert_outcomes(passed=1)
