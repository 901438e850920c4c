"""The output-folder rule (trainers/out_dir.py) and the one export function on it (trainers/export.py): nothing
written over without --force, never the source, all or nothing through a temporary folder and a rename."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from tests.support.fake_adapter import write_adapter
from trainers.export import export_adapter
from trainers.out_dir import OutDirError, check_out_dir, removed_on_failure, staged


@pytest.fixture
def run(tmp_path):
    write_adapter(tmp_path / "run" / "adapter")
    return tmp_path / "run"


def test_export_writes_a_plain_rank_r_adapter_and_nothing_else(run, tmp_path):
    out = export_adapter(run, 2, tmp_path / "exports" / "r2")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert {tuple(t.shape) for t in weights.values()} == {(2, 64), (64, 2)}
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["r2"], "no temporary folder left"


def test_export_refuses_a_non_empty_folder_unless_forced_and_then_replaces_it_whole(run, tmp_path):
    out = tmp_path / "r2"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutDirError, match="not empty"):
        export_adapter(run, 2, out)
    assert (out / "mine.txt").read_text() == "keep me"
    export_adapter(run, 2, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2", "run"]


def test_export_never_writes_over_its_source_even_forced(run):
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    for out in (run / "adapter", run, run.parent):
        with pytest.raises(OutDirError, match="own source"):
            export_adapter(run, 2, out, force=True)
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_a_failed_export_leaves_no_folder(run, tmp_path):
    with pytest.raises(ValueError, match="rank 9"):
        export_adapter(run, 9, tmp_path / "new" / "r9")
    assert not (tmp_path / "new").exists()


def test_a_folder_under_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutDirError, match="afile is a file"):
        check_out_dir(tmp_path / "afile" / "out", flag="--out")


def test_own_earlier_output_may_be_reused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text("{}")
    assert check_out_dir(tmp_path / "d", reusable=lambda p: (p / "manifest.json").exists()) == tmp_path / "d"
    with pytest.raises(OutDirError):
        check_out_dir(tmp_path / "d")


def test_staged_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_removed_on_failure_keeps_what_existed_or_is_worth_keeping(tmp_path):
    with pytest.raises(RuntimeError):
        with removed_on_failure(tmp_path / "runs" / "a"):
            raise RuntimeError("set-up failed")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(RuntimeError):
        with removed_on_failure(tmp_path / "b", keep=lambda p: (p / "checkpoints").is_dir()) as out:
            (out / "checkpoints").mkdir()
            raise RuntimeError("interrupted after a checkpoint")
    assert (tmp_path / "b" / "checkpoints").is_dir()
