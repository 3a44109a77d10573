"""``python -m chaos``'s arguments: what it refuses, and a replay command that runs the same job again."""

from __future__ import annotations

import pytest

from chaos.__main__ import parse, replay_command
from chaos.run import epochs_for


def test_the_replay_command_keeps_every_choice_that_shapes_the_run() -> None:
    args = parse(["--seed", "7", "--faults", "20", "--kinds", "sigkill,stop", "--epochs", "36"])
    assert (args.seed, args.faults, args.kinds, args.epochs) == (7, 20, ("sigkill", "stop"), 36)
    assert (
        replay_command(7, 20, ("sigkill", "stop"), 36)
        == "python -m chaos --seed 7 --faults 20 --kinds sigkill,stop --epochs 36"
    )
    assert replay_command(7, 20, None) == "python -m chaos --seed 7 --faults 20"  # the default length: not written
    assert parse([]).epochs is None and epochs_for(20) == 17


@pytest.mark.parametrize(
    ("argv", "message"), [(["--epochs", "1"], "--epochs: 1 is too few"), (["--faults", "0"], "--faults: 0")]
)
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
