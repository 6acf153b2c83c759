"""The synthetic benchmark: determinism, one referent per expression (checked by an
independent resolver), the spatial share, baselines and ensure_synthetic."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SMALL_SYNTHETIC
from hivg.data.manifest import read_manifest
from hivg.data.prepare import ensure_synthetic, prepare_synthetic

COLOUR_WORDS = "red|green|blue|yellow|purple"
DESC = rf"the (?:(small|large) )?(?:({COLOUR_WORDS}) )?(circle|square|triangle|diamond|shape)"
SUPERLATIVE = re.compile(rf"^the (leftmost|rightmost|topmost|bottommost|largest|smallest) "
                         rf"(?:(small|large) )?(?:({COLOUR_WORDS}) )?(circle|square|triangle|diamond|shape)$")
RELATIONAL = re.compile(rf"^{DESC} (to the left of|to the right of|above|below) {DESC}$")
ATTRIBUTE = re.compile(rf"^{DESC}$")


# ----------------------------------------------------------------------------- an independent resolver


def fits(obj: dict, size, colour, shape) -> bool:
    return ((size is None or obj["size"] == size) and (colour is None or obj["colour"] == colour)
            and (shape in (None, "shape") or obj["shape"] == shape))


def centre(obj: dict) -> tuple[float, float]:
    x1, y1, x2, y2 = obj["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def clearly_ahead(kind: str, a: dict, b: dict) -> bool:
    """a is clearly the more {kind} of the two: centres 8 px apart, sides a factor 1.25."""
    side_a, side_b = a["box"][2] - a["box"][0], b["box"][2] - b["box"][0]
    (ax, ay), (bx, by) = centre(a), centre(b)
    return {"largest": side_a >= 1.25 * side_b, "smallest": side_b >= 1.25 * side_a,
            "leftmost": bx - ax >= 8, "rightmost": ax - bx >= 8,
            "topmost": by - ay >= 8, "bottommost": ay - by >= 8}[kind]


def resolve(phrase: str, objects: list[dict]) -> tuple[str, set[int]]:
    """(type, the objects the phrase can refer to); one object means unambiguous."""
    if m := SUPERLATIVE.match(phrase):
        kind, *desc = m.groups()
        group = [i for i, o in enumerate(objects) if fits(o, *desc)]
        assert len(group) >= 2, f"{phrase!r}: a superlative over one object"
        winners = {i for i in group
                   if all(clearly_ahead(kind, objects[i], objects[j]) for j in group if j != i)}
        return "superlative", winners or set(group)
    if m := RELATIONAL.match(phrase):
        t_desc, relation, a_desc = m.groups()[:3], m.group(4), m.groups()[4:]
        anchors = [i for i, o in enumerate(objects) if fits(o, *a_desc)]
        if len(anchors) != 1:
            return "relational", set(range(len(objects)))
        a = objects[anchors[0]]
        ax1, ay1, ax2, ay2 = a["box"]
        acx, acy = centre(a)

        def loosely(o):
            cx, cy = centre(o)
            return {"to the left of": cx < acx, "to the right of": cx > acx,
                    "above": cy < acy, "below": cy > acy}[relation]

        def strictly(o):
            x1, y1, x2, y2 = o["box"]
            return {"to the left of": x2 <= ax1, "to the right of": x1 >= ax2,
                    "above": y2 <= ay1, "below": y1 >= ay2}[relation]

        others = [i for i, o in enumerate(objects) if i != anchors[0] and fits(o, *t_desc)]
        assert len(others) >= 2, f"{phrase!r}: the relation is not needed"
        found = {i for i in others if loosely(objects[i])}
        return "relational", found if all(strictly(objects[i]) for i in found) else set(range(len(objects)))
    m = ATTRIBUTE.match(phrase)
    assert m, f"{phrase!r} does not follow the grammar"
    return "attribute", {i for i, o in enumerate(objects) if fits(o, *m.groups())}


def rows_with_objects(storage: Path, split: str):
    raw = storage / "data" / "synthetic" / "raw"
    sidecar = json.loads((raw / "objects.json").read_text())
    for row in read_manifest(storage / "data", "synthetic", split).to_pylist():
        index = int(row["id"].rsplit("/", 1)[1])
        expr = sidecar["expressions"][split][index]
        yield row, expr, sidecar["images"][expr["image"]]


# ----------------------------------------------------------------------------- tests


def test_every_expression_has_exactly_one_referent(synthetic_storage):
    for split in SMALL_SYNTHETIC:
        for row, expr, image in rows_with_objects(synthetic_storage, split):
            kind, referents = resolve(row["phrase"], image["objects"])
            assert referents == {expr["target"]}, (split, row["phrase"], image)
            assert kind == row["expr_type"] == expr["expr_type"]
            target_box = image["objects"][expr["target"]]["box"]
            assert [row["x1"], row["y1"], row["x2"], row["y2"]] == target_box
            assert Path(row["image_path"]).name == expr["image"]


def test_scenes_share_attributes_and_spatial_expressions_dominate(synthetic_storage):
    types: Counter = Counter()
    colour_alone = 0
    for split in SMALL_SYNTHETIC:
        for row, expr, image in rows_with_objects(synthetic_storage, split):
            objects = image["objects"]
            assert len(objects) >= 3
            assert 128 <= image["width"] <= 192 and 128 <= image["height"] <= 192
            types[row["expr_type"]] += 1
            colour = objects[expr["target"]]["colour"]
            colour_alone += sum(o["colour"] == colour for o in objects) == 1
    total = sum(types.values())
    assert total == sum(SMALL_SYNTHETIC.values())
    assert set(types) == {"attribute", "relational", "superlative"}
    assert (types["relational"] + types["superlative"]) / total >= 0.4
    assert colour_alone / total < 0.35  # colour alone rarely identifies the target


def _files(storage: Path) -> dict[str, bytes]:
    """Generated files (images, split files, sidecar) by relative path, and the image bytes
    packed in shards (whose image_path column names the storage folder)."""
    folder = storage / "data" / "synthetic"
    files = {str(p.relative_to(folder)): p.read_bytes()
             for p in sorted((folder / "raw").rglob("*")) if p.is_file()}
    for shard in sorted((folder / "shards").glob("*.parquet")):
        files[f"shards/{shard.name}"] = pq.read_table(shard, columns=["image_bytes"]).to_pylist()
    return files


def _manifest_rows(storage: Path) -> list[dict]:
    rows = []
    for split in SMALL_SYNTHETIC:
        for row in read_manifest(storage / "data", "synthetic", split).to_pylist():
            row["image_path"] = Path(row["image_path"]).name  # the storage folders differ
            rows.append(row)
    return rows


def test_same_seed_same_bytes_other_seed_other_data(synthetic_storage, tmp_path):
    prepare_synthetic(tmp_path / "again", seed=3, sizes=SMALL_SYNTHETIC, pack_images=True)
    assert _files(tmp_path / "again") == _files(synthetic_storage)
    assert _manifest_rows(tmp_path / "again") == _manifest_rows(synthetic_storage)
    baselines = "data/synthetic/baselines.json"
    assert (tmp_path / "again" / baselines).read_text() == (synthetic_storage / baselines).read_text()

    prepare_synthetic(tmp_path / "other", seed=4, sizes=SMALL_SYNTHETIC)
    other = _files(tmp_path / "other")
    assert other["raw/objects.json"] != _files(synthetic_storage)["raw/objects.json"]
    assert [r["phrase"] for r in _manifest_rows(tmp_path / "other")] != \
        [r["phrase"] for r in _manifest_rows(synthetic_storage)]


def test_baselines_are_sane(synthetic_storage):
    baselines = json.loads((synthetic_storage / "data/synthetic/baselines.json").read_text())
    assert set(baselines) == {"centre_box", "largest_object", "random_object"}
    for split in SMALL_SYNTHETIC:
        rows = list(rows_with_objects(synthetic_storage, split))
        for name in baselines:
            assert 0.0 <= baselines[name][split] <= 1.0
        # Objects never overlap, so a chosen object hits exactly when it is the target.
        largest = [max(range(len(i["objects"])), key=lambda k: (i["objects"][k]["box"][2] - i["objects"][k]["box"][0]))
                   for _, _, i in rows]
        hits = [e["target"] == k for (_, e, _), k in zip(rows, largest)]
        assert baselines["largest_object"][split] == pytest.approx(sum(hits) / len(rows), abs=1e-4)
        chance = sum(1 / len(i["objects"]) for _, _, i in rows) / len(rows)
        assert baselines["random_object"][split] == pytest.approx(chance, abs=0.2)
        assert baselines["centre_box"][split] < 0.25


def test_ensure_synthetic_reuses_a_complete_benchmark(synthetic_storage, tmp_path):
    info = synthetic_storage / "data/synthetic/info.json"
    before = info.stat().st_mtime_ns
    logs: list[str] = []
    folder = ensure_synthetic(synthetic_storage, seed=3, sizes=SMALL_SYNTHETIC, log=logs.append)
    assert folder == synthetic_storage / "data" / "synthetic"
    assert info.stat().st_mtime_ns == before and "ready" in logs[0]

    tiny = {"train": 6, "val": 3}
    ensure_synthetic(tmp_path, seed=1, sizes=tiny)
    ensure_synthetic(tmp_path, seed=2, sizes=tiny)  # another seed: regenerated
    assert json.loads((tmp_path / "data/synthetic/info.json").read_text())["seed"] == 2
    assert sorted(p.name for p in (tmp_path / "data/synthetic").glob("*.parquet")) == \
        ["train.parquet", "val.parquet"]
