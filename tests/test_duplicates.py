"""``run.py duplicates``: groups of exact and near duplicates, from the real CLI.

A small collection as a user has it: 100 distinct generated pictures in 10 classes
(``bench/distinct_images.py``: pictures of a class are alike and never equal, the
negative control) and copies of 12 of them, each smaller than its original: resized
to 60 % and saved as PNG, re-encoded as JPEG at quality 70 at 90 %, or cropped by
5 % of the width and the height. The pipeline builds the bundle with default flags
(a subprocess, relative paths), then ``duplicates`` lists the groups: every copy with
its original, never two originals together, the original marked largest.

The copied originals are those of aspect 3:5 to 5:3: a 5 % crop of a 16:9 or wider
picture scores 13-15 here, above the default threshold (12; README, "Finding
duplicates"), a known limit; the other pictures' nearest originals score 27 and more.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mosaic import duplicates

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import distinct_images  # noqa: E402

N = 100
COPIES = 12
KINDS = ("resize", "jpeg", "crop")


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def make_copy(path: Path, kind: str, target: Path) -> Path:
    """A copy of the picture at ``path`` with fewer pixels than it, as ``kind``."""
    with Image.open(path) as image:
        picture = ImageOps.exif_transpose(image).convert("RGBA")
    white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    picture = Image.alpha_composite(white, picture).convert("RGB")
    width, height = picture.size
    if kind == "resize":
        target = target.with_suffix(".png")
        picture.resize((round(width * 0.6), round(height * 0.6)),
                       Image.Resampling.LANCZOS).save(target)
    elif kind == "jpeg":
        target = target.with_suffix(".jpg")
        picture.resize((round(width * 0.9), round(height * 0.9)),
                       Image.Resampling.LANCZOS).save(target, quality=70)
    else:
        target = target.with_suffix(".jpg")
        picture.crop((round(width * 0.02), round(height * 0.03), width - round(width * 0.03),
                      height - round(height * 0.02))).save(target, quality=90)
    return target


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("duplicates")
    distinct_images.generate(work / "pictures", N, seed=5, classes=10, jobs=1, quiet=True)
    images = work / "pictures" / "images"
    originals = sorted(p for p in images.rglob("*") if p.is_file())
    assert len(originals) == N
    with open(work / "pictures" / "labels.csv", newline="") as handle:
        aspect = {row["filename"]: int(row["width"]) / int(row["height"])
                  for row in csv.DictReader(handle)}
    moderate = [i for i, path in enumerate(originals)
                if 0.6 <= aspect[path.relative_to(images).as_posix()] <= 1 / 0.6]
    (images / "copies").mkdir()
    copy_of = {}
    for number, index in enumerate(moderate[::len(moderate) // COPIES][:COPIES]):
        kind = KINDS[number % len(KINDS)]
        made = make_copy(originals[index], kind, images / "copies" / f"copy-{index}-{kind}")
        copy_of[made.resolve()] = originals[index].resolve()
    result = run_cli(work, "pipeline", "--images", "pictures/images", "--id", "dups", "-q")
    assert result.returncode == 0, result.stderr
    return {"work": work, "copy_of": copy_of, "originals": {p.resolve() for p in originals}}


def test_groups_hold_each_copy_with_its_original_and_nothing_else(collection):
    result = run_cli(collection["work"], "duplicates", "--id", "dups", "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["group", "id", "source", "width", "height", "bytes", "largest"]
    members = [dict(zip(rows[0], row)) for row in rows[1:]]
    group_of = {Path(m["source"]).resolve(): int(m["group"]) for m in members}
    # every made duplicate is grouped with its original
    for copy, original in collection["copy_of"].items():
        assert copy in group_of, f"{copy.name} is in no group"
        assert group_of.get(original) == group_of[copy], copy.name
    # negative control: no two distinct originals share a group
    groups: dict[int, list[Path]] = {}
    for source, group in group_of.items():
        groups.setdefault(group, []).append(source)
    for group, sources in groups.items():
        originals = [s for s in sources if s in collection["originals"]]
        assert len(originals) == 1, (group, [s.name for s in sources])
    assert len(groups) == len(collection["copy_of"])
    # groups numbered from 0 by their smallest id; members by id; the original largest
    ids = [int(m["id"]) for m in members]
    numbers = [int(m["group"]) for m in members]
    assert numbers == sorted(numbers) and set(numbers) == set(range(len(groups)))
    smallest = [min(i for i, g in zip(ids, numbers) if g == k) for k in range(len(groups))]
    assert smallest == sorted(smallest)
    for member in members:
        source = Path(member["source"]).resolve()
        assert member["largest"] == ("1" if source in collection["originals"] else "0")
        assert int(member["bytes"]) == source.stat().st_size
        assert int(member["width"]) > 0 and int(member["height"]) > 0


def test_json_lists_the_same_groups(collection):
    work = collection["work"]
    as_csv = run_cli(work, "duplicates", "--id", "dups", "--format", "csv", "-o", "groups.csv")
    as_json = run_cli(work, "duplicates", "--id", "dups", "--format", "json", "-o", "-")
    assert as_csv.returncode == 0 and as_json.returncode == 0, as_json.stderr
    with open(work / "groups.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    document = json.loads(as_json.stdout)
    assert document["threshold"] == duplicates.MAX_DIFFERENCE
    flat = [(g["group"], item["id"], item["source"], item["largest"])
            for g in document["groups"] for item in g["items"]]
    assert flat == [(int(r["group"]), int(r["id"]), r["source"], r["largest"] == "1")
                    for r in rows]


def test_a_strict_threshold_finds_fewer_pairs(collection):
    strict = run_cli(collection["work"], "duplicates", "--id", "dups", "--threshold", "0")
    assert strict.returncode == 0, strict.stderr
    assert len(strict.stdout.strip().splitlines()) - 1 < 2 * len(collection["copy_of"])


@pytest.mark.parametrize("args, words", [
    (["--id", "no-such-bundle"], "no finished bundle"),
    (["--id", "dups", "--threshold", "-1"], "--threshold"),
    (["--id", "dups", "--threshold", "300"], "--threshold"),
    (["--id", "dups", "--threshold", "many"], "--threshold"),
    (["--id", "dups", "--format", "xml"], "--format"),
    (["--id", "dups", "-o", "no/such/folder/out.csv"], "--output"),
])
def test_bad_flags_are_one_error_line_exit_2(collection, args, words):
    result = run_cli(collection["work"], "duplicates", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], lines
    assert result.stdout == ""


def test_union_find_groups_by_smallest_id():
    """The stages alone: chains join, groups are numbered by their smallest id."""
    labels = duplicates.group_labels(8, [(np.array([5, 1]), np.array([6, 7])),
                                         (np.array([7]), np.array([2])),
                                         (np.array([6]), np.array([0]))])
    assert labels.tolist() == [0, 1, 1, 3, 4, 0, 0, 1]
    group, ids = duplicates.groups_from_labels(labels)
    assert group.tolist() == [0, 0, 0, 1, 1, 1] and ids.tolist() == [0, 5, 6, 1, 2, 7]
    largest = duplicates.largest_members(group, ids, [10, 20, 20, 5, 5, 5],
                                         [1, 1, 2, 3, 3, -1])
    assert largest.tolist() == [False, False, True, True, False, False]


def test_a_picture_differs_from_its_crop_less_than_from_another():
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    crop = np.asarray(Image.fromarray(base[2:62, 3:63]).resize((64, 64)))
    other = base.copy()
    other[16:32, 16:32] = 255 - other[16:32, 16:32]
    small = [np.asarray(Image.fromarray(p).resize((32, 32), Image.Resampling.BOX))
             for p in (base, crop, other)]
    x = np.stack([small[0], small[0], small[0]])
    y = np.stack([small[0], small[1], small[2]])
    same, cropped, different = duplicates.pair_differences(x, y)
    assert same == 0
    assert cropped <= duplicates.MAX_DIFFERENCE < different
