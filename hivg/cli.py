"""What every pipeline shares: exit codes, storage and run names, override parsing."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from hivg.config import Config, ConfigError, load_config, load_preset
from hivg.errors import UserError

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2
# On a cluster every node has HIVG_STORAGE (cluster.yaml): jobs need no --storage there.
STORAGE_ENV = "HIVG_STORAGE"


def default_storage() -> str:
    return os.environ.get(STORAGE_ENV) or "runs"


def run_main(main: Callable[[], int | None]) -> None:
    """Exit 0 on success, 2 with one line on a user error, 1 with a traceback otherwise."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
    sys.exit(code or EXIT_OK)


def resolve_config(config_file: str | None, preset: str, overrides: list[str]) -> Config:
    config = load_config(config_file) if config_file else load_preset(preset)
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"{text!r}: expected a key=value override after the flags")
    return config.replace(overrides) if overrides else config


def with_storage_defaults(config: Config, storage: Path) -> Config:
    if config.data.data_dir is None:
        config = config.replace({"data.data_dir": str((storage / "data").resolve())})
    return config


def default_run_name(config: Config) -> str:
    """Readable and deterministic (never a timestamp): preset, dataset, variant, seed, hash."""
    tree = config.to_dict()
    tree["data"].pop("data_dir")  # where the data lives does not change the run
    digest = hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:6]
    return f"{config.preset}-{config.data.dataset}-{config.variant}-seed{config.seed}-{digest}"
