"""Model loading, adapters and training recipes. Imports neither Ray nor MLflow nor the orchestrator."""
