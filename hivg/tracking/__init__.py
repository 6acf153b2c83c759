"""Experiment tracking outside the trainer: MLflow, on rank 0 only.

The trainer only knows the `Tracker` protocol (hivg.train.hooks); `NullTracker` there is the
default everywhere else. Importing this package imports mlflow (the `cluster` extra).
"""
from hivg.tracking.mlflow_tracker import (RUN_KEY_TAG, MlflowTracker, check_reachable,
                                          find_run, is_secret_key, package_tags, redact,
                                          resolve_tracking_uri, sigterm_as_keyboard_interrupt,
                                          tracked_run, ui_command)

__all__ = ["MlflowTracker", "resolve_tracking_uri", "ui_command", "check_reachable",
           "find_run", "tracked_run", "sigterm_as_keyboard_interrupt", "package_tags",
           "is_secret_key", "redact", "RUN_KEY_TAG"]
