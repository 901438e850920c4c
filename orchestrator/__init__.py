"""dyrank's public surface: the config schema and loader. Everything else may change behind the CLI."""

from orchestrator.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
