"""`dyrank resume` reads its config back from MLflow, where anyone who can write to the store could have put
it: before it runs, the config is validated again and the fields that would execute code or write outside
the run's folder are refused unless the person resuming says so again on the command line."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from orchestrator.errors import PipelineError


def path_like(name: str) -> bool:
    """A name that, used as a folder or file name, would leave its parent folder (or hide in it)."""
    return (name.startswith(".") or "\0" in name or len(PurePosixPath(name).parts) != 1
            or len(PureWindowsPath(name).parts) != 1)


def check_resumed_config(cfg, run_id: str, allow_remote_code: bool = False) -> None:
    """One PipelineError naming the field, or nothing. `cfg` is the Config read back from run `run_id`."""
    where = f"config.yaml of run {run_id}"
    if cfg.model.trust_remote_code and not allow_remote_code:
        raise PipelineError(f"{where}: model.trust_remote_code is true, which runs code shipped with the model; "
                            "resume with --allow-remote-code if you meant it")
    names = [("name", cfg.name)] + [(f"baselines job name {job.name!r}", job.name) for job in cfg.baseline_jobs()]
    for field, name in names:
        if path_like(name):
            raise PipelineError(f"{where}: {field} {name!r} is path-like and would write outside the run folder; "
                                "refusing to resume it")
