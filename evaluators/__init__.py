"""Per-rank evaluation, metrics and rank selection. Imports neither Ray nor MLflow nor the orchestrator."""
