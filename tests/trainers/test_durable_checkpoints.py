"""Checkpoints and run state survive disk faults: fsync before rename, a verified manifest, torn logs repaired."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import Interrupt, stop_at, tiny_job
from trainers import atomic
from trainers import checkpoint as ckpt
from trainers.finetune import FinetuneRecipe, train

OVERRIDES = ("training.max_steps=12", "training.checkpoint_every=4")


def _cut_at_10(out, keep: int):
    with pytest.raises(Interrupt):
        train(tiny_job(*OVERRIDES, f"training.keep_checkpoints={keep}"), out, on_step=stop_at(10), progress=False)


def _zero(path):
    path.write_bytes(b"\0" * path.stat().st_size)  # same size: only the hash can tell


def test_zeroed_checkpoint_is_skipped_and_the_previous_one_resumes_exactly(tmp_path, caplog):
    straight = train(tiny_job(*OVERRIDES), tmp_path / "straight", progress=False)
    cut = tmp_path / "cut"
    _cut_at_10(cut, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(cut / "checkpoints")] == ["step-00000004", "step-00000008"]
    _zero(cut / "checkpoints" / "step-00000008" / "trainable.safetensors")

    recipe = FinetuneRecipe(tiny_job(*OVERRIDES, "training.keep_checkpoints=2"), cut, progress=False)
    with caplog.at_level(logging.WARNING, logger="dyrank.checkpoint"):
        recipe.setup()
    assert recipe.start_step == 4, "the zeroed step-8 checkpoint must not be loaded"
    assert "step-00000008" in caplog.text and "sha256" in caplog.text
    recipe.train()
    a, b = load_file(straight.adapter_dir / "adapter_model.safetensors"), load_file(cut / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed from step 4: still bit-identical to the straight run"


def test_with_one_checkpoint_a_failed_verification_is_an_error_not_a_fresh_start(tmp_path):
    cut = tmp_path / "cut"
    _cut_at_10(cut, keep=1)
    _zero(cut / "checkpoints" / "step-00000008" / "trainable.safetensors")
    recipe = FinetuneRecipe(tiny_job(*OVERRIDES, "training.keep_checkpoints=1"), cut, progress=False)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint .* verifies.*step-00000008"):
        recipe.setup()


def test_checkpoint_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(a))), real_rename(a, b))[1])
    recipe = FinetuneRecipe(tiny_job(*OVERRIDES), tmp_path, progress=False)
    recipe.setup()
    target = ckpt.save_checkpoint(tmp_path / "ck", 4, recipe.model, recipe.optimizer, recipe.scheduler, recipe.sampler, 1)
    renamed = events.index(("rename", str(target) + ".tmp"))
    synced_before = {path for kind, path in events[:renamed] if kind == "fsync"}
    names = {p.name for p in target.iterdir()}
    assert {"manifest.json", "trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"} <= names
    assert {str(target) + ".tmp/" + n for n in names} | {str(target) + ".tmp"} <= synced_before
    assert ("fsync", str(tmp_path / "ck")) in events[renamed:], "the folder holding the rename is fsynced too"
    assert ckpt.verify_checkpoint(target) is None


def test_new_checkpoint_is_verified_before_older_ones_are_rotated_out(tmp_path, monkeypatch):
    recipe = FinetuneRecipe(tiny_job(*OVERRIDES), tmp_path, progress=False)
    recipe.setup()
    args = (recipe.model, recipe.optimizer, recipe.scheduler, recipe.sampler, 1)
    good = ckpt.save_checkpoint(tmp_path / "ck", 4, *args)
    real = ckpt.fsync_tree

    def torn_write(folder):  # the disk drops the tail of a file after the manifest was computed
        data = (folder / "optimizer.safetensors").read_bytes()
        (folder / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
        real(folder)
    monkeypatch.setattr(ckpt, "fsync_tree", torn_write)
    with pytest.raises(ckpt.CheckpointError, match="step-00000008 failed verification.*optimizer.safetensors"):
        ckpt.save_checkpoint(tmp_path / "ck", 8, *args)
    assert good.is_dir() and ckpt.verify_checkpoint(good) is None, "keep=1, yet the verified older one survived"


def test_torn_last_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(tmp_path, caplog):
    cut = tmp_path / "cut"
    _cut_at_10(cut, keep=1)
    with (cut / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 11, "train_lo')  # a kill mid-write
    with caplog.at_level(logging.WARNING, logger="dyrank.files"):
        result = train(tiny_job(*OVERRIDES, "training.keep_checkpoints=1"), cut, progress=False)
    assert "torn last line" in caplog.text
    assert result.resumed_from == 8
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_corrupt_line_inside_a_log_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        atomic.read_jsonl_log(path)


def test_summary_write_hit_by_a_full_disk_leaves_the_old_file_whole(tmp_path, monkeypatch):
    summary = tmp_path / "train_summary.json"
    atomic.write_json_atomic(summary, {"steps": 12})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as raised:
        atomic.write_json_atomic(summary, {"steps": 13, "final_loss": 1.0})
    assert raised.value.errno == errno.ENOSPC
    assert json.loads(summary.read_text()) == {"steps": 12}
    assert [p.name for p in tmp_path.iterdir()] == ["train_summary.json"], "no temp file left behind"


def test_a_checkpoint_from_before_manifests_still_resumes(tmp_path, caplog):
    """An interrupted run of an older dyrank (no manifest.json) resumes, with a warning that it is unverified;
    one of its files missing is still refused."""
    from trainers.checkpoint import MANIFEST, latest_valid_checkpoint, list_checkpoints

    overrides = ("training.max_steps=8", "training.checkpoint_every=4", "training.keep_checkpoints=1")
    with pytest.raises(Interrupt):
        train(tiny_job(*overrides), tmp_path, on_step=stop_at(6), progress=False)
    [checkpoint] = list_checkpoints(tmp_path / "checkpoints")
    (checkpoint / MANIFEST).unlink()
    with caplog.at_level("WARNING"):
        assert latest_valid_checkpoint(tmp_path / "checkpoints") == checkpoint
    assert "predates checkpoint manifests" in caplog.text
    (checkpoint / "rng.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError):
        latest_valid_checkpoint(tmp_path / "checkpoints")
