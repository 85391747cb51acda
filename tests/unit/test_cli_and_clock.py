"""The tether command's flags, and the virtual clock's own rules."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tether import _clock
from tether.cli import main
from tether.demo.chain import free_port
from tether.testing import VirtualClock


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["nope"], "invalid choice"),
        (["demo", "--budget-ms", "-5"], "positive whole number"),
        (["demo", "--budget-ms", "0"], "positive whole number"),
        (["demo", "--budget-ms", "1.5"], "positive whole number"),
        (["demo", "--budget-ms"], "expected one argument"),
        (["demo", "--unknown"], "unrecognized arguments"),
        (["gateway"], "required: FILE"),
        (["gateway", "g.yaml", "--workers", "0"], "from 1 to 256"),
        (["gateway", "g.yaml", "--workers", "257"], "from 1 to 256"),
        (["gateway", "g.yaml", "--workers", "two"], "from 1 to 256"),
        (["gateway", "g.yaml", "--workers", "-1"], "from 1 to 256"),
        (["gateway", "g.yaml", "--workers", "٣"], "from 1 to 256"),  # a non-ASCII digit
        (["pg"], "required: PG_COMMAND"),
    ],
)
def test_bad_command_lines_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every bad flag or value is refused with usage and a reason, exit status 2."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_runs_a_budget_through_nested_calls_and_the_chain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tether demo` shows the budget shrinking, the inherit rule, expiry, the leak, and a
    query stopped on a real PostgreSQL; then the gateway, FastAPI and grpc.aio chain answers
    each printed curl command: a success, every kind of refusal, a 504 at the budget and a
    rewritten upstream error, with nothing left running on PostgreSQL."""
    assert main(["demo", "--budget-ms", "300", "--no-wait"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "budget of 300 ms set at the edge",
        "inherited=True",
        "x-request-timeout",
        "deadline exceeded",
        "TaskGroup children end",
        "plain task outlives",
        "statements still running on the server: 0",
        "curl -s -H 'X-Request-ID: 5b0c6a52",
        "-> 200 in",
        "-> 504 in",
        "-> 400 in",
        "X-App-ID is required",
        "-> 403 in",
        "-> 415 in",
        "-> 404 in",
        "-> 500 in",
        "the orders ledger is closed for maintenance",
        "statements still running after the slow order: 0",
    ):
        assert expected in out
    answered = [line for line in out.splitlines() if line.startswith("  -> 504 in")]
    assert 250 <= int(answered[0].split()[3]) < 1000  # at the budget, not after the 5 s query


def test_a_port_is_handed_out_once() -> None:
    """The demo's (and the tests') port picker never hands out a port twice, even one asked
    for by number with nothing listening on it: two binds in a row may get the same free port
    from the kernel, and a gateway's listen and admin ports were once one port."""
    first = free_port()
    assert free_port(first) != first
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert first not in ports


def test_virtual_clock_only_moves_forward() -> None:
    """advance() refuses negative and NaN steps."""
    clock = VirtualClock()
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="forward"):
            clock.advance(bad)


def test_virtual_clock_installs_and_restores_tethers_clocks() -> None:
    """Inside `with clock`, tether reads virtual time; afterwards the system clocks again."""
    clock = VirtualClock(start=50, wall_start=1_000)
    with clock:
        assert _clock.monotonic() == 50
        assert _clock.wall() == 1_000
        with clock:  # nesting is allowed
            clock.advance(5)
        assert _clock.monotonic() == 55
    assert _clock.monotonic is time.monotonic
    assert _clock.wall is time.time


def test_virtual_loop_skips_sleeps() -> None:
    """An hour of sleeping takes no real time on the virtual loop."""
    clock = VirtualClock()

    async def main() -> float:
        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    start_real = time.monotonic()
    assert clock.run(main()) == pytest.approx(1_000 + 3600)
    assert time.monotonic() - start_real < 5


def test_gateway_check_accepts_the_example_and_lists_every_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tether gateway FILE --check`: 0 and a summary for a valid file, 1 and every mistake
    with its line for a bad one, 1 for a file that cannot be read."""
    example = Path(__file__).resolve().parents[2] / "examples" / "gateway" / "gateway.yaml"
    assert main(["gateway", str(example), "--check"]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: nowhere\nzone: Zone\nservices: {}\n")
    assert main(["gateway", str(bad), "--check"]) == 1
    err = capsys.readouterr().err
    assert "3 mistakes" in err
    assert "line 1: listen" in err
    assert "line 2: zone" in err
    assert "line 3: services" in err
    assert main(["gateway", str(tmp_path / "missing.yaml"), "--check"]) == 1
    assert "cannot be read" in capsys.readouterr().err
