"""The per-cell ground truth behind the perception probe (hivg.bench.probe), its probes, and
pipelines/probe_perception.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from hivg.bench import probe as probe_perception
from hivg.data import oracle, synthetic
from hivg.data.transforms import eval_placement
from hivg.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("box, grid, cells, centre", [
    ((0.0, 0.0, 0.5, 0.5), 2, {0}, 0),                 # one cell centre inside
    ((0.0, 0.0, 1.0, 1.0), 2, {0, 1, 2, 3}, 3),        # all four; centre on the corner rounds up
    ((0.05, 0.05, 0.2, 0.2), 2, {0}, 0),               # covers no cell centre: its centre's cell
    ((0.55, 0.05, 0.95, 0.45), 4, {2, 3, 6, 7}, 7),
])
def test_object_cells(box, grid, cells, centre):
    assert oracle.object_cells(box, grid) == (cells, centre)


def test_cell_truth_describes_each_target(synthetic_storage):
    folder = synthetic_storage / "data" / "synthetic"
    sidecar = synthetic.load_sidecar(folder / "raw")
    rows = pq.read_table(folder / "val.parquet").to_pylist()
    truth = oracle.cell_truth(folder, "val", image_size=128, grid=8)
    assert truth.features.shape == (len(rows), 64, oracle.FEATURES)
    assert truth.types == [r["expr_type"] for r in rows]
    for i, (row, expr) in enumerate(zip(rows, sidecar["expressions"]["val"])):
        image = sidecar["images"][expr["image"]]
        target = image["objects"][expr["target"]]
        cell = int(truth.target_cell[i])
        assert truth.owned[i, cell]
        feature = truth.features[i, cell]
        for name, values in oracle.ATTRIBUTE_VALUES.items():
            assert values[int(feature[oracle.attribute_slice(name)].argmax())] == target[name]
        placement = eval_placement(row["image_width"], row["image_height"], 128)
        (dx, dy), s = placement.offset, placement.scale
        expected = torch.tensor([(row["x1"] * s + dx) / 128, (row["y1"] * s + dy) / 128,
                                 (row["x2"] * s + dx) / 128, (row["y2"] * s + dy) / 128])
        assert torch.allclose(feature[oracle.BOX], expected, atol=1e-5)
        # every object of the image is somewhere on the grid, each on its own cells
        assert truth.has_object()[i].sum() >= len(image["objects"])


def test_cell_truth_refuses_a_sidecar_of_another_split_size(synthetic_storage, tmp_path):
    folder = tmp_path / "synthetic"
    shutil.copytree(synthetic_storage / "data" / "synthetic", folder)
    sidecar = json.loads((folder / "raw" / "objects.json").read_text())
    sidecar["expressions"]["val"] = sidecar["expressions"]["val"][:-1]
    (folder / "raw" / "objects.json").write_text(json.dumps(sidecar))
    with pytest.raises(DataError, match="objects.json: .* val expressions, the manifest has"):
        oracle.cell_truth(folder, "val", 128, 8)


def test_linear_probe_reads_what_the_features_hold():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (400,))
    informative = torch.nn.functional.one_hot(labels, 4).float() + 0.1 * torch.randn(400, 4)
    noise = torch.randn(400, 4)
    assert probe_perception.linear_probe(informative[:300], labels[:300], informative[300:],
                                         labels[300:]) == 1.0
    assert probe_perception.linear_probe(noise[:300], labels[:300], noise[300:],
                                         labels[300:]) < 0.5


def test_selection_scores_count_cells_of_the_target():
    owned = torch.zeros(3, 4, dtype=torch.bool)
    owned[0, 1] = owned[1, 2] = owned[1, 3] = owned[2, 0] = True
    truth = oracle.CellTruth(torch.zeros(3, 4, oracle.FEATURES), owned,
                             torch.tensor([1, 2, 0]), ["attribute", "relational", "attribute"])
    logits = torch.tensor([[0, 5, 0, 0], [0, 0, 0, 5], [0, 5, 0, 0]], dtype=torch.float)
    scores = probe_perception.selection_scores(logits, truth)
    assert scores == pytest.approx({"all": 2 / 3, "attribute": 0.5, "relational": 1.0})


def test_probe_script_end_to_end(synthetic_storage, tmp_path):
    storage = tmp_path / "storage"
    (storage / "data").mkdir(parents=True)
    (storage / "data" / "synthetic").symlink_to(synthetic_storage / "data" / "synthetic")
    done = subprocess.run([sys.executable, str(ROOT / "pipelines" / "probe_perception.py"),
                           "--storage", str(storage), "--epochs", "1", "model.weights=null"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((storage / "probes" / "perception.json").read_text())
    assert set(result["linear"]) == {"colour", "shape", "size"}
    for name, row in result["linear"].items():
        assert 0.0 <= row["last layer"] <= 1.0 and row["chance"] > 0
    for label in ("CLIP patches", "ground truth", "ground truth, learned text"):
        (epoch,) = result["selection"][label]
        assert epoch["epoch"] == 1 and 0.0 <= epoch["all"] <= 1.0
    assert "test selection" in done.stdout


def test_probe_script_refuses_another_dataset(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "pipelines" / "probe_perception.py"),
                           "--storage", str(tmp_path), "data.dataset=refcoco"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "data.dataset 'refcoco'" in done.stderr and "Traceback" not in done.stderr
