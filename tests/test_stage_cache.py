"""The stage cache: what its keys depend on, fingerprints, and entries that are either
complete and verified or invisible."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hivg.config import load_preset
from hivg.errors import UserError
from hivg.train import stage_cache as sc
from hivg.train.checkpoint import save_checkpoint
from hivg.train.stage_cache import StageCache, code_fingerprint, data_fingerprint, stage_key

TINY = load_preset("tiny")
N_STAGES = len(TINY.hilora.stages)
BASE = {"data_hash": "d0", "code_hash": "c0", "device_type": "cpu", "world_size": 1}


def keys(config=TINY, **kw) -> list[str]:
    args = {**BASE, **kw}
    return [stage_key(config, k, **args) for k in range(N_STAGES)]


# ----------------------------------------------------------------------------- keys

ALL = set(range(N_STAGES))

# (what changes, config overrides, stage_key arguments, stages whose key must change)
KEY_CASES = [
    ("stage 0 lr", {"hilora.stages.0.lr": 2e-3}, {}, {0, 1, 2}),
    ("stage 1 rank", {"hilora.stages.1.rank": 4}, {}, {1, 2}),
    ("stage 1 epochs", {"hilora.stages.1.epochs": 2}, {}, {1, 2}),
    ("last stage lr", {"hilora.stages.2.lr": 1e-4}, {}, {2}),
    ("stage 1 name (names its adapters)", {"hilora.stages.1.name": "s1"}, {}, {1, 2}),
    ("seed", {"seed": 7}, {}, ALL),
    ("model", {"model.vl_encoder.dropout": 0.2}, {}, ALL),
    ("model attention", {"model.attention": "eager"}, {}, ALL),
    ("loss", {"loss.l1": 1.0}, {}, ALL),
    ("optim", {"optim.weight_decay": 0.01}, {}, ALL),
    ("policy", {"hilora.policy": "released"}, {}, ALL),
    ("val split (picks the best epoch)", {"data.val_split": "test"}, {}, ALL),
    ("max_eval_samples (caps val)", {"data.max_eval_samples": 10}, {}, ALL),
    ("max_train_samples", {"data.max_train_samples": 10}, {}, ALL),
    ("augment", {"data.augment": False}, {}, ALL),
    ("precision bf16 on cpu", {"precision": "bf16"}, {}, ALL),
    ("data hash", {}, {"data_hash": "d1"}, ALL),
    ("code hash", {}, {"code_hash": "c1"}, ALL),
    ("device type", {}, {"device_type": "cuda"}, ALL),
    ("world size", {}, {"world_size": 2}, ALL),
    # Unchanged:
    ("variant label", {"variant": "ablation-x"}, {}, set()),
    ("preset label", {"preset": "other"}, {}, set()),
    ("num_workers", {"data.num_workers": 4}, {}, set()),
    ("data_dir path", {"data.data_dir": "/somewhere/else"}, {}, set()),
    ("test splits", {"data.test_splits": ["test"]}, {}, set()),
    ("config.device (the caller's device_type counts)", {"device": "cpu"}, {}, set()),
    ("precision auto == fp32 on cpu", {"precision": "fp32"}, {}, set()),
]


@pytest.mark.parametrize("what,overrides,kwargs,changed", KEY_CASES,
                         ids=[c[0] for c in KEY_CASES])
def test_stage_key_depends_on_exactly_what_it_should(what, overrides, kwargs, changed):
    base = keys()
    new = keys(TINY.replace(overrides) if overrides else TINY, **kwargs)
    differs = {k for k in range(N_STAGES) if new[k] != base[k]}
    assert differs == changed, what


def test_stage_keys_are_distinct_hex_and_stable():
    ks = keys()
    assert len(set(ks)) == N_STAGES
    assert all(len(k) == sc.KEY_LENGTH and int(k, 16) >= 0 for k in ks)
    assert keys(load_preset("tiny")) == ks  # a fresh, equal config gives the same keys
    assert keys(device_type="cuda:1") == keys(device_type="cuda")  # the device type only
    with pytest.raises(ValueError):
        stage_key(TINY, N_STAGES, **BASE)


@pytest.mark.parametrize("precision,device,expected", [
    ("auto", "cpu", "fp32"), ("auto", "cuda", "bf16"), ("fp32", "cuda", "fp32"),
    ("fp32", "cpu", "fp32"), ("bf16", "cpu", "bf16"), ("bf16", "cuda", "bf16")])
def test_effective_precision_mirrors_the_trainer(precision, device, expected):
    payload = sc.stage_key_payload(TINY.replace({"precision": precision}), 0, "d0", "c0",
                                   device, 1, weights_hash="w")
    assert payload["precision"] == expected


def test_weights_file_enters_the_key_by_content(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-1")
    ka = keys(TINY.replace({"model.weights": str(a)}))
    assert keys(TINY.replace({"model.weights": str(b)})) == ka  # same bytes, other path
    b.write_bytes(b"weights-2")
    assert keys(TINY.replace({"model.weights": str(b)}))[0] != ka[0]
    with pytest.raises(UserError, match="not found"):
        keys(TINY.replace({"model.weights": str(tmp_path / "missing.pt")}))


# ----------------------------------------------------------------------------- fingerprints


def test_code_fingerprint_follows_file_edits(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    src = sc._package_dir()
    shutil.copy(src / "config.py", pkg / "config.py")
    shutil.copy(src / "configs" / "tiny.yaml", pkg / "sub" / "tiny.yaml")
    (pkg / "sub" / "x.json").write_text("{}")
    (pkg / "notes.txt").write_text("ignored")

    def fp() -> str:
        code_fingerprint.cache_clear()
        return code_fingerprint(pkg)

    first = fp()
    assert first.startswith(__import__("hivg").__version__ + "-")
    assert fp() == first
    (pkg / "notes.txt").write_text("still ignored")
    assert fp() == first
    for edit in (lambda: (pkg / "config.py").write_text((pkg / "config.py").read_text() + "#\n"),
                 lambda: (pkg / "sub" / "x.json").write_text('{"a": 1}'),
                 lambda: (pkg / "sub" / "tiny.yaml").rename(pkg / "sub" / "small.yaml")):
        before = fp()
        edit()
        assert fp() != before
    code_fingerprint.cache_clear()
    real = code_fingerprint()
    assert code_fingerprint() is real  # cached per process


def _manifest(path: Path, phrases: list[str]) -> None:
    pq.write_table(pa.table({"id": [str(i) for i in range(len(phrases))], "phrase": phrases}),
                   path)


def test_data_fingerprint_follows_manifests(tmp_path):
    ds = tmp_path / "data" / "toy"
    ds.mkdir(parents=True)
    _manifest(ds / "train.parquet", ["a", "b"])
    _manifest(ds / "val.parquet", ["c"])
    first = data_fingerprint(tmp_path / "data", "toy")
    assert data_fingerprint(str(tmp_path / "data"), "toy") == first
    (ds / ".val.parquet.123.tmp").write_bytes(b"half written")  # temporaries do not count
    (ds / "images").mkdir()
    (ds / "images" / "0.png").write_bytes(b"not hashed")
    assert data_fingerprint(tmp_path / "data", "toy") == first
    _manifest(ds / "val.parquet", ["d"])
    second = data_fingerprint(tmp_path / "data", "toy")
    assert second != first
    (ds / "baselines.json").write_text('{"x": {"val": 0.5}}')
    assert data_fingerprint(tmp_path / "data", "toy") != second
    with pytest.raises(UserError) as err:
        data_fingerprint(tmp_path / "data", "absent")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the store

METRICS = [{"stage": "stage0", "stage_index": 0, "epoch": 0, "val/acc50": 0.25},
           {"stage": "stage0", "stage_index": 0, "epoch": 1, "val/acc50": 0.5,
            "train/loss": float("nan")}]
INFO = {"stage": "stage0", "best_epoch": 1, "val/acc50": 0.5, "seconds": 12.5}
KEY = "0123456789abcdef0123"


def _checkpoint(tmp_path: Path, value: float = 1.0, name: str = "ckpt.pt") -> Path:
    path = tmp_path / "run" / name
    save_checkpoint(path, {"model": {"w": torch.full((4,), value)}, "stage_index": 0})
    return path


def _cache(tmp_path: Path) -> tuple[StageCache, list[str]]:
    logs: list[str] = []
    return StageCache(tmp_path / "stage-cache", log=logs.append), logs


def _listing(cache: StageCache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir())


def test_publish_then_lookup_round_trips(tmp_path):
    cache, logs = _cache(tmp_path)
    assert cache.lookup(KEY) is None and cache.entries() == []
    entry = cache.publish(KEY, _checkpoint(tmp_path, 3.0), METRICS, INFO)
    assert entry == cache.root / KEY
    assert _listing(cache) == [KEY]  # no temporaries left behind
    hit = cache.lookup(KEY)
    assert hit is not None and hit.checkpoint == entry / "best.pt"
    assert hit.metrics[0] == METRICS[0] and hit.metrics[1]["val/acc50"] == 0.5
    assert {k: hit.info[k] for k in INFO} == INFO
    assert hit.info["key"] == KEY and "created" in hit.info
    assert torch.equal(hit.load()["model"]["w"], torch.full((4,), 3.0))
    assert cache.entries() == [KEY] and logs == []


def _flip_checkpoint(entry: Path) -> None:
    data = bytearray((entry / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "best.pt").write_bytes(bytes(data))


def _truncate_metrics(entry: Path) -> None:
    text = (entry / "metrics.json").read_text()
    (entry / "metrics.json").write_text(text[: len(text) // 2])


def _bad_json_with_matching_hash(entry: Path) -> None:
    import hashlib
    data = b"[{"
    (entry / "metrics.json").write_bytes(data)
    complete = json.loads((entry / "COMPLETE").read_text())
    complete["files"]["metrics.json"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                         "size": len(data)}
    (entry / "COMPLETE").write_text(json.dumps(complete))


CORRUPTIONS = [
    ("flipped checkpoint bytes", _flip_checkpoint, "best.pt"),
    ("truncated metrics", _truncate_metrics, "metrics.json"),
    ("unreadable json", _bad_json_with_matching_hash, "JSON"),
    ("missing COMPLETE", lambda e: (e / "COMPLETE").unlink(), "COMPLETE"),
    ("garbage COMPLETE", lambda e: (e / "COMPLETE").write_text("{not json"), "COMPLETE"),
    ("missing info", lambda e: (e / "info.json").unlink(), "info.json"),
]


@pytest.mark.parametrize("what,corrupt,reason", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_entry_is_a_miss_and_moved_aside(tmp_path, what, corrupt, reason):
    cache, logs = _cache(tmp_path)
    entry = cache.publish(KEY, _checkpoint(tmp_path), METRICS, INFO)
    corrupt(entry)
    assert cache.lookup(KEY) is None
    assert len(logs) == 1 and KEY in logs[0] and reason in logs[0], logs
    names = _listing(cache)
    assert KEY not in names
    assert len(names) == 1 and names[0].startswith(f"{KEY}.corrupt-")
    assert cache.entries() == []
    # The slot is free again: a new publish is visible.
    cache.publish(KEY, _checkpoint(tmp_path), METRICS, INFO)
    assert cache.lookup(KEY) is not None and cache.entries() == [KEY]
    assert cache.sweep(older_than_s=0) == 1 and _listing(cache) == [KEY]


def test_publish_onto_a_valid_entry_keeps_the_first(tmp_path):
    cache, logs = _cache(tmp_path)
    cache.publish(KEY, _checkpoint(tmp_path, 1.0), METRICS, INFO)
    again = cache.publish(KEY, _checkpoint(tmp_path, 2.0, "other.pt"), METRICS[:1],
                          {**INFO, "stage": "other"})
    assert again == cache.root / KEY and _listing(cache) == [KEY]
    hit = cache.lookup(KEY)
    assert torch.equal(hit.load()["model"]["w"], torch.full((4,), 1.0))
    assert hit.info["stage"] == "stage0" and logs == []


def test_publish_onto_a_torn_entry_replaces_it(tmp_path):
    cache, logs = _cache(tmp_path)
    torn = cache.root / KEY
    torn.mkdir(parents=True)
    (torn / "best.pt").write_bytes(b"half")
    cache.publish(KEY, _checkpoint(tmp_path, 5.0), METRICS, INFO)
    hit = cache.lookup(KEY)
    assert hit is not None and torch.equal(hit.load()["model"]["w"], torch.full((4,), 5.0))
    assert len(logs) == 1 and KEY in logs[0]
    assert [n for n in _listing(cache) if n != KEY][0].startswith(f"{KEY}.corrupt-")


def test_concurrent_publishers_and_readers_see_one_consistent_entry(tmp_path):
    cache, logs = _cache(tmp_path)
    sources = [_checkpoint(tmp_path, float(i), f"c{i}.pt") for i in range(6)]
    seen, errors = [], []

    def publish(i: int) -> None:
        try:
            cache.publish(KEY, sources[i], METRICS, {**INFO, "writer": i})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def read() -> None:
        for _ in range(20):
            hit = cache.lookup(KEY)
            if hit is not None:
                seen.append(hit.info["writer"])

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and logs == []
    assert _listing(cache) == [KEY]  # one entry, no temporaries, nothing moved aside
    winner = cache.lookup(KEY).info["writer"]
    assert set(seen) <= {winner}
    assert torch.equal(cache.lookup(KEY).load()["model"]["w"], torch.full((4,), float(winner)))


def test_temporaries_are_never_keys(tmp_path, monkeypatch):
    cache, logs = _cache(tmp_path)
    # A publisher that dies after copying the checkpoint leaves nothing visible.
    real_write = sc._write

    def dying_write(path, data):
        if path.name == "COMPLETE":
            raise OSError("disk full")
        return real_write(path, data)

    monkeypatch.setattr(sc, "_write", dying_write)
    with pytest.raises(OSError):
        cache.publish(KEY, _checkpoint(tmp_path), METRICS, INFO)
    monkeypatch.undo()
    assert _listing(cache) == [] and cache.lookup(KEY) is None
    # A crashed publisher's leftover temporary is not an entry, and sweep removes it.
    leftover = cache.root / f".tmp-{KEY}-dead"
    leftover.mkdir()
    assert cache.entries() == [] and cache.lookup(KEY) is None
    for bad in (f".tmp-{KEY}-dead", f"{KEY}.corrupt-x", "../x", ""):
        with pytest.raises(ValueError):
            cache.lookup(bad)
    assert cache.sweep(older_than_s=3600) == 0
    assert cache.sweep(older_than_s=0) == 1 and _listing(cache) == []
    assert logs == []


def test_cache_root_is_under_storage(tmp_path):
    assert sc.cache_root(tmp_path) == tmp_path / "stage-cache"


def test_a_cache_logging_to_print_pickles_after_print_is_replaced(tmp_path, monkeypatch):
    """Ray replaces builtins.print in the driver (tqdm_ray, Train's print patch) while the
    cache, built with log=print, still has to be pickled for the workers."""
    import builtins
    import pickle

    cache = StageCache(tmp_path / "cache", log=print)
    monkeypatch.setattr(builtins, "print", lambda *a, **k: None)
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.root == cache.root
