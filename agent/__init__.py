"""The mailpath agent: CLI, diagnose pipeline, scheduling and delivery."""

__version__ = "0.1.0"
