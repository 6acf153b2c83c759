"""docs/config.md from the config schema's help texts (tests/test_config.py checks it is
current):

    python -m tools.config_reference > docs/config.md
"""
from __future__ import annotations

from hivg.config import field_reference, preset_names

HEADER = """# Config keys

Every key of `hivg.config.Config`, as overrides spell it (`python pipelines/train.py
optim.weight_decay=0.01`; study files use the same keys). A stage's keys name the stage:
`hilora.stages.stage1.rank` (or its position, `hilora.stages.1.rank`);
`hilora.num_stages=N` keeps the first N stages. A default of *(preset)* means the preset
decides it (`hivg/configs/{presets}.yaml`): those values live only there.

Generated from the fields' help by `python -m tools.config_reference > docs/config.md`.

| key | default | meaning |
|---|---|---|
"""


def reference() -> str:
    rows = [f"| `{key}` | {'*(preset)*' if default == '(preset)' else f'`{default}`'} | "
            f"{text.replace('|', '/')} |" for key, default, text in field_reference()]
    return HEADER.format(presets="{" + ",".join(preset_names()) + "}") + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
