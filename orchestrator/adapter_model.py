"""The selected adapter as an MLflow model: a pyfunc that loads the base through the adapter's portable id
(`trainers.hub.adapter_base_source`, so a preset, registered id or Hub id resolves on the loading machine,
offline) and the adapter on it, and answers questions: `predict(["What is 2 + 3?"])` -> generated answers.

Saved as MLflow "models from code" (`adapter_model_entry.py`), not a pickle: loading it runs this module's
code, never deserialized objects.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc

ENTRY = Path(__file__).with_name("adapter_model_entry.py")
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
DEFAULT_MAX_NEW_TOKENS = 32


class AdapterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch
        from peft import PeftModel

        from trainers.hub import adapter_base_source
        from trainers.models import default_device, load_base_model, load_tokenizer, resolve_base, resolve_compute_dtype

        adapter = Path(context.artifacts["adapter"])
        base = resolve_base(adapter_base_source(adapter))
        device = default_device()
        dtype = torch.float32 if device.type == "cpu" else resolve_compute_dtype("auto")
        self.tokenizer = load_tokenizer(base)
        self.model = PeftModel.from_pretrained(load_base_model(base, dtype=dtype, device=device), str(adapter)).eval()
        self.max_new_tokens = int((context.model_config or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        from evaluators.metrics import generate_answers

        questions = [str(q) for q in model_input]
        max_new_tokens = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        return generate_answers(self.model, [{"prompt": q, "completion": ""} for q in questions], self.tokenizer,
                                max_new_tokens)


def _ensure_working_folder(fallback: Path) -> None:
    """MLflow's save_model reads the current folder (Path.cwd()). Under `ray job submit` the entrypoint runs in the
    job's uploaded working folder, which Ray may clean up once the job's actors are gone (seen on Ray 2.60): the
    process is left in a deleted folder and every cwd lookup fails. Move to a folder that exists only then."""
    try:
        os.getcwd()
    except FileNotFoundError:
        fallback.mkdir(parents=True, exist_ok=True)
        os.chdir(fallback)


def save_adapter_model(adapter_dir: Path, dst: Path, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> Path:
    """An MLflow pyfunc model folder at `dst` holding the exported adapter (`adapter_dir`) as an artifact."""
    pins = [f"{name}=={metadata.version(name)}" for name in ("torch", "transformers", "peft", "mlflow")]
    quiet = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"  # it copies the adapter in as an "artifact download": no bar in the CLI's output
    _ensure_working_folder(Path(dst).parent)
    try:
        mlflow.pyfunc.save_model(str(dst), python_model=str(ENTRY), artifacts={"adapter": str(adapter_dir)},
                                 model_config={"max_new_tokens": max_new_tokens}, pip_requirements=["dyrank", *pins])
    finally:
        if quiet is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = quiet
    return dst
