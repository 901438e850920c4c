"""The CLI explains itself: `--help` answers without importing torch, `--version`, `dyrank env`, a description
for every subcommand and help on every option, and bare KEY=VALUE overrides beside --set."""

from __future__ import annotations

import argparse
import subprocess
import sys

from orchestrator.cli import build_parser, main, parse_args
from tests.conftest import REPO, TINY_YAML


def _subcommands():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_help_answers_without_importing_torch():
    code = ("import sys; from orchestrator.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray', 'mlflow', 'lm_eval') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", "dyrank --help imported heavy libraries"
    assert "harness" in done.stdout and "env" in done.stdout


def test_every_subcommand_has_a_description_and_every_option_help():
    missing = []
    for name, parser in _subcommands().items():
        if not parser.description:
            missing.append(f"{name}: description")
        missing += [f"{name} {a.dest}" for a in parser._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing, missing


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0
    assert capsys.readouterr().out.startswith("dyrank ")


def test_bare_overrides_beside_set_in_command_line_order():
    args = parse_args(["check", str(TINY_YAML), "training.lr=1e-4", "--set", "training.max_steps=7", "data.max_seq_len=32"])
    assert args.overrides == ["training.lr=1e-4", "training.max_steps=7", "data.max_seq_len=32"]


def test_bare_overrides_reach_the_config(capsys):
    assert main(["check", str(TINY_YAML), "training.max_steps=7", "--set", "adapter.r_max=4"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and "r_max: 4" in printed


def test_a_word_that_is_no_override_is_refused(capsys):
    for argv in (["check", str(TINY_YAML), "training"], ["check", str(TINY_YAML), "--set", "a=1", "oops"]):
        try:
            parse_args(argv)
            raise AssertionError(f"{argv} was accepted")
        except SystemExit as exit:
            assert exit.code == 2
    assert "oops" in capsys.readouterr().err


def test_env_reports_versions_devices_and_an_unreachable_store(tmp_path, capsys):
    code = main(["env", "--tracking-uri", f"sqlite:///{tmp_path}/missing/mlflow.db"])
    out = capsys.readouterr().out
    assert code == 1, "an unreachable store is a failed check"
    for row in ("dyrank", "torch", "transformers", "peft", "ray", "mlflow", "lm-eval", "cpu"):
        assert f"\n  {row} " in out, row
    assert "tracking" in out and "UNREACHABLE" in out
    assert main(["env", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
