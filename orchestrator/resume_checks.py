"""`dyrank resume` reads its config back from MLflow, where anyone who can write to the store could have put
it: before it runs, the config is validated again and the fields that would execute code or write outside
the run's folder are refused: code execution unless the person resuming says so again on the command line."""

from __future__ import annotations

from orchestrator.errors import PipelineError


def check_resumed_config(cfg, run_id: str, allow_remote_code: bool = False) -> None:
    """One PipelineError naming the field, or nothing. `cfg` is the Config read back from run `run_id`."""
    where = f"config.yaml of run {run_id}"
    if cfg.model.trust_remote_code and not allow_remote_code:
        raise PipelineError(f"{where}: model.trust_remote_code is true, which runs code shipped with the model; "
                            "resume with --allow-remote-code if you meant it")
    # Path-like names (the run's or a baseline job's) never get this far: the schema accepts plain names only,
    # and the stored config is parsed by the same schema before this check.
