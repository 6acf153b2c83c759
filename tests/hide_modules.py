"""Run a pipeline as if some packages were not installed (the extras' cases of
tests/test_cli_errors.py): python tests/hide_modules.py ray,mlflow pipelines/train.py ARGS..."""
import runpy
import sys

HIDDEN = set(sys.argv[1].split(","))


class _Hide:
    """First on the import path: the hidden packages cannot be found or imported."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
