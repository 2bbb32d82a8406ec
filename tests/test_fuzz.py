"""Bad inputs at every entry point: a clean error naming what was wrong, never a traceback, nothing written.

The CLI cases are generated from the parser itself: every option of every command that
takes a number or a choice gets each bad value below, with the command's required options
filled with harmless values. The env cases are a table over the imagined envs' make, reset
and step. `test_the_fuzz_can_fail` shows that the checks catch a parser that lets a bad value
through.
"""

import argparse
import math

import gymnasium as gym
import numpy as np
import pytest

from keycld_gym.cli import build_parser, main
from keycld_gym.errors import KeyCLDError

BAD_NUMBERS = ("0", "-1", "-0.5", "nan", "inf", "-inf", "abc", "", "1e400", "0x10")
BAD_CHOICE = "no-such-choice"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _filled(parser: argparse.ArgumentParser, tmp, skip: argparse.Action) -> list[str]:
    """The command's required options, each with a value it accepts at parse time."""
    args = []
    for action in parser._actions:
        if action is skip or not action.required or not action.option_strings:
            continue
        if action.choices:
            value = str(next(iter(action.choices)))
        else:
            value = "1" if action.type not in (None, str) else str(tmp / f"required-{action.dest}")
        args += [action.option_strings[0], value]
    return args


def _accepts(action: argparse.Action, value: str) -> bool:
    """Whether `value` is a valid value of `action` (a number in the type's range, or a choice)."""
    if action.choices:
        return value in [str(c) for c in action.choices]
    try:
        action.type(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def cli_cases(tmp) -> list[tuple[str, list[str], str]]:
    """(command, argv, option) for every bad value of every numeric or choice option of every command.

    A value a numeric option accepts is left out; the only ones accepted are "0" by the
    options that are counts or weights from zero (seeds, `--agent-steps`, ...), which the
    test checks, so no bad value slips out of the fuzz unseen.
    """
    cases = []
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            if action.choices:
                values = [BAD_CHOICE]
            elif action.type is not None and action.type is not str:
                values = [v for v in BAD_NUMBERS if not _accepts(action, v)]
                assert set(BAD_NUMBERS) - set(values) <= {"0"}, f"{name} {action.option_strings[-1]} accepts " \
                                                                f"{sorted(set(BAD_NUMBERS) - set(values))}"
            else:
                continue
            option = action.option_strings[-1]
            for value in values:
                cases.append((name, [name, *_filled(parser, tmp, action), option, value], option))
    return cases


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_every_bad_option_value_is_one_clean_line_naming_the_option(tmp_path, capsys):
    cases = cli_cases(tmp_path)
    assert len(cases) > 250 and len({c[0] for c in cases}) >= 15
    failures = []
    for command, argv, option in cases:
        code, err = _run(argv, capsys)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if code != 2 or "Traceback" in err or option not in last or "error:" not in last:
            failures.append(f"{' '.join(argv[-2:])} ({command}): exit {code}, {last!r}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:20])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was made, not even the --out folders
    print(f"\n{len(cases)} bad CLI values over {len({c[0] for c in cases})} commands: all clean")


def test_the_fuzz_can_fail(tmp_path, capsys, monkeypatch):
    """A parser that let one bad value through is caught (the checks above are not vacuous)."""
    import keycld_gym.cli as cli

    real = cli.build_parser

    def lenient() -> argparse.ArgumentParser:
        parser = real()
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in sub.choices["collect"]._actions:
            if "--episodes" in action.option_strings:
                action.type = int  # accepts 0 and -1
        return parser

    monkeypatch.setattr(cli, "build_parser", lenient)
    argv = ["collect", "--system", "cartpole", "--out", str(tmp_path / "x"), "--episodes", "0", "--frames", "2"]
    try:
        code, err = _run(argv, capsys)
    except BaseException as err:  # noqa: BLE001 - whatever escapes is a failure the fuzz test reports
        code, err = None, repr(err)
    assert code != 2 or "--episodes" not in err.strip().splitlines()[-1]


# -- the env entry points ------------------------------------------------------------------------
# (an array of the action's size in another shape, (1, 1) for (1,), is reshaped: `sim.actions.checked_action`)
ACTIONS = [np.array([np.nan], np.float32), np.array([np.inf], np.float32), np.array([1.0, 2.0], np.float32),
           np.zeros((2, 2), np.float32), "a", None, np.array([-np.inf])]
RESETS = [{"state": {"keypoints": np.full((2, 2), np.nan), "velocities": np.zeros((2, 2))}},
          {"state": {"keypoints": np.full((2, 2), 1e30), "velocities": np.zeros((2, 2))}},
          {"state": {"keypoints": np.zeros((3, 2)), "velocities": np.zeros((2, 2))}},
          {"frames": np.zeros((2, 8, 8, 3), np.uint8)},
          {"frames": np.zeros((1, 64, 128, 3), np.uint8)},
          {"frames": np.zeros((3, 64, 128, 3), np.float32)},
          {"frames": np.zeros((3, 64, 128, 3), np.uint8)},  # blank: no system in front of the background
          {"frames": np.zeros((3, 64, 128, 3), np.uint8), "frame_dt": math.nan},
          {"frames": np.zeros((3, 64, 128, 3), np.uint8), "frame_dt": 2.0}]
MAKES = [dict(obs_type="rgb"), dict(ensemble_mode="x"), dict(uncertainty_penalty=-1.0),
         dict(uncertainty_penalty=math.nan), dict(uncertainty_limit=0.0), dict(action_repeat=0),
         dict(action_repeat=2.7), dict(render_mode="human"), dict(system="cheetah"), dict(checkpoint="/no/such/model")]


def _clean(err: BaseException) -> bool:
    """A package error, or a ValueError / TypeError raised by the package with a message (not from deep inside)."""
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = tb.tb_frame.f_code.co_filename
    if isinstance(err, gym.error.ResetNeeded):  # gymnasium's own error for a step before reset
        return True
    return bool(str(err)) and (isinstance(err, KeyCLDError) or (
        isinstance(err, (ValueError, TypeError)) and "keycld_gym" in raised_in))


def test_every_bad_env_input_is_a_clear_error(tiny_model_dir):
    from keycld_gym.envs.imagined_env import KeyCLDEnv, KeyCLDVectorEnv

    failures, count = [], 0

    def expect_error(label, call):
        nonlocal count
        count += 1
        try:
            call()
        except Exception as err:  # noqa: BLE001 - the kind of error is what is checked
            if not _clean(err):
                failures.append(f"{label}: {type(err).__name__}: {err}")
        else:
            failures.append(f"{label}: accepted")

    env = KeyCLDEnv("cartpole", tiny_model_dir, obs_type="keypoints")
    venv = KeyCLDVectorEnv(2, "cartpole", tiny_model_dir, obs_type="keypoints")
    expect_error("vector step before reset", lambda: venv.step(np.zeros((2, 1), np.float32)))
    env.reset(seed=0)
    venv.reset(seed=0)
    for i, action in enumerate(ACTIONS):
        expect_error(f"step action {i}", lambda a=action: env.step(a))
        batch = action if not isinstance(action, np.ndarray) else np.stack([action, action])
        expect_error(f"vector step action {i}", lambda a=batch: venv.step(a))
    for i, options in enumerate(RESETS):
        expect_error(f"reset options {i}", lambda o=options: env.reset(seed=0, options=o))
    for i, kwargs in enumerate(MAKES):
        settings = {"system": "cartpole", "checkpoint": tiny_model_dir, "obs_type": "keypoints", **kwargs}
        expect_error(f"make {kwargs}", lambda s=settings: KeyCLDEnv(**s))
    expect_error("vector num_envs 0", lambda: KeyCLDVectorEnv(0, "cartpole", tiny_model_dir))
    expect_error("vector max_episode_steps 0", lambda: KeyCLDVectorEnv(2, "cartpole", tiny_model_dir,
                                                                         max_episode_steps=0))
    expect_error("vector exploring_starts 2", lambda: KeyCLDVectorEnv(2, "cartpole", tiny_model_dir,
                                                                        exploring_starts=2.0))
    # after all of it the envs still step and observe finite values
    obs, *_ = env.step(np.array([0.5], np.float32))
    assert np.isfinite(obs).all()
    assert not failures, f"{len(failures)} of {count} cases:\n" + "\n".join(failures)
    print(f"\n{count} bad env inputs: all clean errors")


def test_os_faults_are_one_line_naming_the_path(tiny_model_dir, tiny_data, tmp_path, capsys):
    """`--out` a file, `--json` a folder, an unwritable folder: one line naming the path, before any work."""
    import os

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        ["collect", "--system", "cartpole", "--out", str(a_file / "data"), "--episodes", "1"],
        ["evaluate-model", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--json", str(tmp_path)],
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append(["evaluate-model", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data),
                      "--json", str(locked / "r.json")])
    for argv in cases:
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)
        assert str(a_file) in err or str(tmp_path) in err, (argv, err)
