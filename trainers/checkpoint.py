"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder holds the trainable weights, the optimizer and scheduler state, every RNG the run
draws from (torch CPU/CUDA, the rank sampler), the method's own state (AdaLoRA's importance averages and
rank pattern) and the step, so a resumed run reaches bit-identical final weights. Folders are written under
a temporary name, fsynced (files and folders) and renamed, so a crash mid-write leaves the previous
checkpoint as the latest (the half-written `.tmp` folder is never loaded, and removed by the next save).
Each holds `manifest.json` (size and sha256 of every file): a checkpoint zeroed or cut short by a disk fault fails verification, is skipped with a
warning and the one before it is used; a new checkpoint is verified before older ones are deleted.
Checkpoints that exist but none of which verifies are an error, never a silent fresh start.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainers.atomic import fsync_dir, fsync_tree
from trainers.paths import sha256_file

CHECKPOINT_PREFIX = "step-"
MANIFEST = "manifest.json"
METHOD_TENSORS, METHOD_SCALARS = "method_state.safetensors", "method_state.json"  # TrainingMethod.state_dict
_log = logging.getLogger("dyrank.checkpoint")


class CheckpointError(ValueError):
    """No checkpoint of a run verifies, or a new one did not: resuming would silently lose its training."""


def _split_tensors(tree: dict, prefix: str, tensors: dict, scalars: dict) -> None:
    """Flatten nested dicts (bitsandbytes nests its state) into path-named tensors and JSON scalars."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _split_tensors(value, name + "/", tensors, scalars)
        elif isinstance(value, torch.Tensor):
            tensors[name] = value.detach().to("cpu").contiguous().clone()
        else:
            scalars[name] = value


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        _split_tensors(per_param, f"state/{index}/", tensors, scalars)
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _nest(*flats: dict) -> dict:
    """The inverse of `_split_tensors`: path-named values back into nested dicts."""
    tree: dict = {}
    for flat in flats:
        for name, value in flat.items():
            *path, leaf = name.split("/")
            node = tree
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
    return tree


def optimizer_from_files(tensors: dict, meta: dict) -> dict:
    nested = _nest(tensors, meta["scalars"]).get("state", {})
    return {"state": {int(index): per_param for index, per_param in nested.items()},
            "param_groups": meta["param_groups"]}


def method_state_to_files(state: dict) -> tuple[dict, dict]:
    """A method's own training state (TrainingMethod.state_dict) as safetensors tensors plus JSON scalars."""
    tensors, scalars = {}, {}
    _split_tensors(state, "", tensors, scalars)
    return tensors, scalars


def rng_state() -> dict[str, torch.Tensor]:
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{i}"] = s
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def write_manifest(folder: Path) -> None:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST}
    (Path(folder) / MANIFEST).write_text(json.dumps({"files": files}, indent=2))


LEGACY_FILES = ("trainable.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "state.json")


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint cannot be trusted (missing, truncated or altered file), or None if it verifies.
    A checkpoint written before checkpoints carried a manifest (dyrank at a83f95e and earlier) cannot be
    verified: it is accepted with a warning when all its files are there and none is empty."""
    path = Path(path)
    if not (path / MANIFEST).exists() and all((path / n).is_file() and (path / n).stat().st_size for n in LEGACY_FILES):
        _log.warning("checkpoint %s predates checkpoint manifests: resuming from it unverified", path)
        return None
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"no readable {MANIFEST} ({type(exc).__name__})"
    for name, want in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != want["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {want['bytes']}"
        if sha256_file(file) != want["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


def save_checkpoint(folder: Path, step: int, model, optimizer, scheduler, sampler, keep: int, method=None) -> Path:
    """Write a checkpoint of everything a bit-identical resume needs; `method` (a TrainingMethod) adds its own
    state (e.g. AdaLoRA's importance averages and rank pattern) from `method.state_dict(model)`."""
    folder = Path(folder)
    target = folder / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    opt_tensors, opt_meta = optimizer_to_files(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    rng = rng_state() | {f"sampler_{k}": v for k, v in (sampler.state_dict() if sampler else {}).items()}
    save_file(rng, tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict()}))
    method_tensors, method_scalars = method_state_to_files(method.state_dict(model) if method else {})
    save_file(method_tensors, tmp / METHOD_TENSORS)
    (tmp / METHOD_SCALARS).write_text(json.dumps(method_scalars))
    write_manifest(tmp)
    fsync_tree(tmp)  # every byte on disk before the name says "complete"
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    fsync_dir(folder)
    problem = verify_checkpoint(target)  # read back: only a verified checkpoint may replace older ones
    if problem:
        raise CheckpointError(f"checkpoint {target} failed verification right after writing: {problem}; "
                              "the older checkpoints are kept")
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for torn in folder.glob(f"{CHECKPOINT_PREFIX}*.tmp"):  # a write a crash cut short: never loaded, now dropped
        shutil.rmtree(torn, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and not p.name.endswith(".tmp"))


def latest_valid_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that verifies; each newer one that does not is skipped with a warning.
    None when there is none at all (a fresh start); a CheckpointError when some exist but none verifies."""
    found = list_checkpoints(folder)
    problems = []
    for path in reversed(found):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        problems.append(f"{path.name}: {problem}")
        _log.warning("checkpoint %s failed verification (%s); trying the one before it", path, problem)
    if found:
        raise CheckpointError(f"no checkpoint in {folder} verifies ({'; '.join(problems)}); refusing to start "
                              "over silently: delete the folder's checkpoints to train from step 0")
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, sampler, method=None) -> int:
    """Restore everything saved by `save_checkpoint` (the method's state through `method.load_state_dict`,
    given None for a checkpoint that predates method state); returns the step it was taken at. A damaged
    checkpoint (truncated file, edited JSON) is a ValueError naming the folder, not a traceback from the reader."""
    from safetensors import SafetensorError

    try:
        return _load_checkpoint(Path(path), model, optimizer, scheduler, sampler, method)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: damaged checkpoint ({type(exc).__name__}: {str(exc)[:200]}); move it aside to "
                         "resume from the one before") from None


def _load_checkpoint(path: Path, model, optimizer, scheduler, sampler, method) -> int:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(path / "trainable.safetensors").items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(
        optimizer_from_files(load_file(path / "optimizer.safetensors"), json.loads((path / "optimizer.json").read_text()))
    )
    state = json.loads((path / "state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(path / "rng.safetensors")
    restore_rng(rng)
    if sampler:
        sampler.load_state_dict({k.removeprefix("sampler_"): v for k, v in rng.items() if k.startswith("sampler_")})
    if method and (path / METHOD_SCALARS).is_file():
        method.load_state_dict(model, _nest(load_file(path / METHOD_TENSORS),
                                            json.loads((path / METHOD_SCALARS).read_text())))
    elif method:  # written by a dyrank from before checkpoints held method state
        method.load_state_dict(model, None)
    return state["step"]
