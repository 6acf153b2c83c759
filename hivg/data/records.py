"""Read published split files into validated expression records.

A split file is a pickled list of tuples of plain Python values (formats in
`hivg.data.splits`), loaded with `torch.load(..., weights_only=True)`. Every row is checked;
a bad row is reported as `FILE: row N: REASON: detail`. Strict mode raises `DataError` on
the first bad row; `skip_invalid` drops bad rows and counts them per reason. A file whose
rows all have another dataset's tuple shape is an error in both modes (skipping a whole file
is never what the user meant).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from PIL import Image, UnidentifiedImageError

from hivg.data.splits import DatasetSpec
from hivg.errors import DataError

# Published boxes carry rounding slop (COCO floats, 1-based Flickr pixels): coordinates up to
# this far outside the image are clipped to it; anything further is an invalid row.
BOX_TOLERANCE_PX = 1.0

# Reasons, used in messages and as the keys of the skip counts.
MALFORMED = "malformed tuple"
FOREIGN = "tuple shape of another dataset"
EMPTY_PHRASE = "empty phrase"
BAD_BOX_SIZE = "non-positive box size"
BOX_OUTSIDE = "box outside image"
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
SIZE_MISMATCH = "image size mismatch"

_SHAPE_TEXT = {
    "refcoco": "a RefCOCO-family 5-tuple (image, {height, width}, [x, y, w, h], phrase, polygon)",
    "referit": "a ReferIt 5-tuple (image, mask, [x1, y1, x2, y2], phrase, ...)",
    "flickr": "a Flickr30k 3-tuple (image, [x1, y1, x2, y2], phrase)",
}
# Tuple shapes each row format accepts (mixup mixes COCO rows with referit-shaped rows).
_ACCEPTED_SHAPES = {"refcoco": {"refcoco"}, "referit": {"referit"}, "flickr": {"flickr"},
                    "mixup": {"refcoco", "referit"}}
MIXUP_SOURCES = ("coco", "referit", "flickr")


@dataclass(frozen=True)
class Record:
    """One referring expression, validated; box in xyxy pixels of the original image."""

    id: str
    dataset: str
    split: str
    image_path: str
    image_width: int
    image_height: int
    box: tuple[float, float, float, float]
    phrase: str
    expr_type: str = ""


@dataclass
class SplitRead:
    records: list[Record]
    rows_in_file: int
    skipped: Counter = field(default_factory=Counter)  # reason -> count


class RowError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ParsedRow:
    image_file: str
    source: str                                  # coco | referit | flickr (images folder)
    size: Optional[tuple[int, int]]              # (w, h) from the tuple, None: from the image
    box: tuple[float, float, float, float]       # xyxy pixels, not yet checked
    phrase: str                                  # normalised


def normalise_phrase(text: str) -> str:
    """Lower-case and collapse whitespace (the released code lower-cases phrases)."""
    return " ".join(text.lower().split())


def tuple_shape(row: Any) -> Optional[str]:
    """Which dataset's tuple shape a row has: refcoco, referit, flickr, or None."""
    if not isinstance(row, (tuple, list)):
        return None
    if len(row) == 3:
        return None if isinstance(row[1], dict) else "flickr"
    if len(row) == 5:
        return "refcoco" if isinstance(row[1], dict) else "referit"
    return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box(value: Any) -> tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(map(_number, value)):
        raise RowError(MALFORMED, f"box {value!r} is not 4 finite numbers")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _phrase(value: Any) -> str:
    if not isinstance(value, str):
        raise RowError(MALFORMED, f"phrase {value!r} is not a string")
    phrase = normalise_phrase(value)
    if not phrase:
        raise RowError(EMPTY_PHRASE, "the phrase has no words")
    return phrase


def _image_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise RowError(MALFORMED, f"image file {value!r} is not a file name")
    return value


def _size_dict(value: dict) -> tuple[int, int]:
    w, h = value.get("width"), value.get("height")
    if not (_number(w) and _number(h) and w > 0 and h > 0):
        raise RowError(MALFORMED, f"image size {value!r} lacks positive height and width")
    return int(w), int(h)


def parse_row(row: Any, row_format: str) -> ParsedRow:
    """Turn one published tuple into a ParsedRow (box as xyxy); raise RowError if unusable."""
    shape = tuple_shape(row)
    if shape is None:
        got = f"{type(row).__name__} of length {len(row)}" if isinstance(row, (tuple, list)) \
            else type(row).__name__
        raise RowError(MALFORMED, f"got a {got}, expected {_SHAPE_TEXT[_main_shape(row_format)]}")
    if shape not in _ACCEPTED_SHAPES[row_format]:
        raise RowError(FOREIGN, f"the row is {_SHAPE_TEXT[shape]}, expected "
                                f"{_SHAPE_TEXT[_main_shape(row_format)]}")
    image_file = _image_file(row[0])
    if shape == "flickr":
        return ParsedRow(image_file, "flickr", None, _box(row[1]), _phrase(row[2]))
    if shape == "refcoco":
        x, y, w, h = _box(row[2])  # RefCOCO family boxes are [x, y, w, h]
        return ParsedRow(image_file, "coco", _size_dict(row[1]), (x, y, x + w, y + h),
                         _phrase(row[3]))
    source = "referit"
    if row_format == "mixup":  # index 1 names the source of a non-COCO row
        if row[1] not in ("referit", "flickr"):
            raise RowError(MALFORMED, f"mixup row index 1 is {row[1]!r}, expected an "
                                      "{height, width} dict, 'referit' or 'flickr'")
        source = row[1]
    return ParsedRow(image_file, source, None, _box(row[2]), _phrase(row[3]))


def _main_shape(row_format: str) -> str:
    return "refcoco" if row_format == "mixup" else row_format


class ImageProbe:
    """Image sizes from file headers, each file opened once (many rows share an image)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, int] | RowError] = {}

    def size(self, path: Path) -> tuple[int, int]:
        key = str(path)
        if key not in self._cache:
            self._cache[key] = self._probe(path)
        found = self._cache[key]
        if isinstance(found, RowError):
            raise found
        return found

    @staticmethod
    def _probe(path: Path) -> tuple[int, int] | RowError:
        if not path.is_file():
            return RowError(MISSING_IMAGE, f"{path} does not exist")
        try:
            with Image.open(path) as im:  # reads the header only
                return im.size
        except (UnidentifiedImageError, OSError) as e:
            return RowError(UNREADABLE_IMAGE, f"{path} ({type(e).__name__})")


def check_box(box: tuple[float, float, float, float], width: int,
              height: int) -> tuple[float, float, float, float]:
    """The box clipped to the image when within tolerance; RowError otherwise."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise RowError(BAD_BOX_SIZE, f"box xyxy {list(box)} has width {x2 - x1:g} and "
                                     f"height {y2 - y1:g}")
    t = BOX_TOLERANCE_PX
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise RowError(BOX_OUTSIDE, f"box xyxy {list(box)} is outside the {width}x{height} image")
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise RowError(BOX_OUTSIDE, f"box xyxy {list(box)} has no area inside the "
                                    f"{width}x{height} image")
    return clipped


def load_split_file(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        rows = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read the split file ({first})") from None
    if not isinstance(rows, (list, tuple)):
        raise DataError(f"{path}: expected a list of tuples, got {type(rows).__name__}")
    if not rows:
        raise DataError(f"{path}: the split file has no rows")
    return list(rows)


def read_split_file(spec: DatasetSpec, split: str, path: Path,
                    images_dir: Path | Mapping[str, Path], *, skip_invalid: bool = False,
                    probe: ImageProbe | None = None) -> SplitRead:
    """Validated records of one split file.

    images_dir: the folder of the dataset's images, or for mixup a mapping from source
    (coco, referit, flickr) to its folder. Record ids are `{dataset}/{split}/{row}` with the
    row's index in the split file, so they stay stable when invalid rows are skipped.
    """
    rows = load_split_file(Path(path))
    probe = probe or ImageProbe()
    result = SplitRead(records=[], rows_in_file=len(rows))
    foreign = 0
    for index, row in enumerate(rows):
        try:
            result.records.append(_record(spec, split, index, row, images_dir, probe))
        except RowError as e:
            foreign += e.reason == FOREIGN
            if not skip_invalid:
                raise DataError(f"{path}: row {index}: {e}") from None
            result.skipped[e.reason] += 1
    if foreign == len(rows):
        raise DataError(f"{path}: every row has another dataset's tuple shape; is this a "
                        f"{spec.name} ({spec.folder}) split file?")
    if not result.records:
        counts = ", ".join(f"{k}: {v}" for k, v in result.skipped.most_common())
        raise DataError(f"{path}: every row is invalid ({counts})")
    return result


def _images_folder(images_dir: Path | Mapping[str, Path], source: str) -> Path:
    if isinstance(images_dir, Mapping):
        if source not in images_dir:
            raise DataError(f"no images folder for {source} rows (give {source}=DIR)")
        return Path(images_dir[source])
    return Path(images_dir)


def _record(spec: DatasetSpec, split: str, index: int, row: Any,
            images_dir: Path | Mapping[str, Path], probe: ImageProbe) -> Record:
    parsed = parse_row(row, spec.row_format)
    image_path = (_images_folder(images_dir, parsed.source) / parsed.image_file).resolve()
    actual = probe.size(image_path)
    if parsed.size is not None and parsed.size != actual:
        raise RowError(SIZE_MISMATCH, f"the tuple says {parsed.size[0]}x{parsed.size[1]}, "
                                      f"{image_path} is {actual[0]}x{actual[1]}")
    width, height = actual
    box = check_box(parsed.box, width, height)
    return Record(id=f"{spec.name}/{split}/{index}", dataset=spec.name, split=split,
                  image_path=str(image_path), image_width=width, image_height=height, box=box,
                  phrase=parsed.phrase)
