"""``run.py duplicates``: groups of exact and near duplicates, from the real CLI.

A small collection as a user has it: 100 distinct generated pictures in 10 classes
(``bench/distinct_images.py``: pictures of a class are alike and never equal, the
negative control) and copies of 12 of them, each smaller than its original: resized
to 60 % and saved as PNG, re-encoded as JPEG at quality 70 at 90 %, or cropped by
5 % of the width and the height. The pipeline builds the bundle with default flags
(a subprocess, relative paths), then ``duplicates`` lists the groups: every copy with
its original, never two originals together, the original marked largest. The
pipeline stores the same groups in the bundle (``duplicates.json``, the manifest's
``duplicates``), which ``duplicates`` reads at the default threshold, ``info`` and the
pipeline's summary count, and a search at another threshold agrees with.

The copied originals are those of aspect 3:5 to 5:3: a 5 % crop of a 16:9 or wider
picture scores 13-15 here, above the default threshold (12; README, "Finding
duplicates"), a known limit; the other pictures' nearest originals score 27 and more.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from mosaic import duplicates
from mosaic.bundle import Bundle

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


def _listed(result: subprocess.CompletedProcess) -> list[tuple[list[int], int]]:
    """``(member ids, the largest's id)`` of each group ``duplicates --format json`` printed."""
    assert result.returncode == 0, result.stderr
    return [([item["id"] for item in g["items"]],
             next(item["id"] for item in g["items"] if item["largest"]))
            for g in json.loads(result.stdout)["groups"]]


def test_the_pipeline_stores_the_groups_that_duplicates_lists(collection):
    work = collection["work"]
    bundle = work / "output" / "dups"
    entry = json.loads((bundle / "manifest.json").read_text())["duplicates"]
    stored = json.loads((bundle / entry["path"]).read_text())
    assert entry["threshold"] == stored["threshold"] == duplicates.MAX_DIFFERENCE
    # read back at the default threshold: the stored groups, counted as the manifest says
    default = run_cli(work, "duplicates", "--id", "dups", "--format", "json")
    groups = _listed(default)
    assert "stored by the pipeline" in default.stderr
    assert entry["groups"] == len(groups) == len(stored["groups"]) >= len(collection["copy_of"])
    assert entry["items"] == sum(len(ids) for ids, _ in groups)
    assert [(g["ids"], g["largest"]) for g in stored["groups"]] == groups
    # a search made now (a threshold a hair above the stored one) finds the same groups
    fresh = run_cli(work, "duplicates", "--id", "dups", "--format", "json",
                    "--threshold", str(duplicates.MAX_DIFFERENCE + 1e-6))
    assert "searched now" in fresh.stderr and _listed(fresh) == groups


def test_info_and_the_summary_count_the_groups(collection):
    work = collection["work"]
    entry = json.loads((work / "output" / "dups" / "manifest.json").read_text())["duplicates"]
    info = run_cli(work, "info", "--id", "dups")
    assert info.returncode == 0, info.stderr
    assert f"duplicates {entry['groups']} groups of {entry['items']} items" in info.stdout
    again = run_cli(work, "pipeline", "--images", "pictures/images", "--id", "dups")
    assert again.returncode == 0, again.stderr
    assert f"duplicates: {entry['groups']} groups of {entry['items']} items" in again.stdout
    assert re.search(r"duplicates \d+\.\ds \(cached\)", again.stdout), again.stdout


def test_no_duplicates_stores_none_and_info_says_so(collection):
    work = collection["work"]
    shutil.copytree(work / "output" / "dups", work / "off" / "dups")
    result = run_cli(work, "pipeline", "--images", "pictures/images", "--id", "dups",
                     "--out", "off", "--no-duplicates", "-q")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((work / "off" / "dups" / "manifest.json").read_text())
    assert manifest["duplicates"] is None
    info = run_cli(work, "info", "--id", "dups", "--out", "off")
    assert "duplicates not stored (pipeline --no-duplicates)" in info.stdout
    # the command still searches such a bundle
    listed = run_cli(work, "duplicates", "--id", "dups", "--out", "off", "--format", "json")
    assert "searched now" in listed.stderr and len(_listed(listed)) == manifest_groups(work)


def manifest_groups(work: Path) -> int:
    return json.loads((work / "output" / "dups" / "manifest.json").read_text())[
        "duplicates"]["groups"]


def test_the_server_and_a_published_site_hand_the_viewer_the_groups(collection):
    from server import create_app

    work = collection["work"]
    bundle = work / "output" / "dups"
    entry = json.loads((bundle / "manifest.json").read_text())["duplicates"]
    stored = json.loads((bundle / entry["path"]).read_text())
    client = create_app({"TESTING": True}, out_dir=work / "output").test_client()
    body = client.get("/api/collections/dups").get_json()
    assert {k: body["duplicates"][k] for k in ("groups", "items", "threshold")} == \
        {k: entry[k] for k in ("groups", "items", "threshold")}
    served = client.get(body["duplicates"]["url"])
    assert served.status_code == 200 and served.mimetype == "application/json"
    assert served.get_json() == stored
    published = run_cli(work, "publish", "--id", "dups", "--to", "site", "--no-thumbnails", "-q")
    assert published.returncode == 0, published.stderr
    site = json.loads((work / "site" / "data" / "collection.json").read_text())
    assert site["duplicates"]["groups"] == entry["groups"]
    assert json.loads((work / "site" / "data" / site["duplicates"]["url"]).read_text()) == stored
    # a bundle without stored groups: null, and the file is a 404 in the API's error shape
    shutil.copytree(bundle, work / "bare" / "dups")
    manifest = json.loads((work / "bare" / "dups" / "manifest.json").read_text())
    manifest["duplicates"] = None
    (work / "bare" / "dups" / "manifest.json").write_text(json.dumps(manifest))
    bare = create_app({"TESTING": True}, out_dir=work / "bare").test_client()
    assert bare.get("/api/collections/dups").get_json()["duplicates"] is None
    missing = bare.get("/collections/dups/duplicates.json")
    assert missing.status_code == 404 and missing.get_json()["ok"] is False


def test_after_a_removal_readers_leave_the_removed_items_out(collection):
    """``run.py remove`` keeps the stored file; ``info`` counts the groups without the
    removed item, ``duplicates`` searches the changed bundle (its metadata has no row
    for the item) and finds those same groups, and a published site gets them."""
    work = collection["work"]
    shutil.copytree(work / "output" / "dups", work / "removed" / "dups")
    stored = json.loads((work / "removed" / "dups" / "duplicates.json").read_text())["groups"]
    pair = next(g for g in stored if len(g["ids"]) == 2)
    gone = pair["ids"][0]
    result = run_cli(work, "remove", "--id", "dups", "--out", "removed", "--ids", str(gone))
    assert result.returncode == 0, result.stderr
    left = [g for g in stored if g is not pair]
    info = run_cli(work, "info", "--id", "dups", "--out", "removed")
    assert f"duplicates {len(left)} groups of {sum(len(g['ids']) for g in left)} items" \
        in info.stdout
    listed = run_cli(work, "duplicates", "--id", "dups", "--out", "removed", "--format", "json")
    assert "searched now" in listed.stderr
    assert [ids for ids, _ in _listed(listed)] == [g["ids"] for g in left]
    published = run_cli(work, "publish", "--id", "dups", "--out", "removed", "--to",
                        "removed-site", "--no-thumbnails", "-q")
    assert published.returncode == 0, published.stderr
    site = json.loads((work / "removed-site" / "data" / "duplicates.json").read_text())
    assert [g["ids"] for g in site["groups"]] == [g["ids"] for g in left]


def test_stored_groups_leave_out_removed_items():
    """The stages alone: what a reader keeps of the stored groups once items are gone."""
    group, ids = np.array([0, 0, 0, 1, 1, 2, 2]), np.array([1, 4, 6, 2, 3, 5, 9])
    largest = np.array([False, True, False, True, False, False, True])
    document = duplicates.groups_document(group, ids, largest)
    assert document["groups"] == [{"ids": [1, 4, 6], "largest": 4},
                                  {"ids": [2, 3], "largest": 2}, {"ids": [5, 9], "largest": 9}]
    assert json.loads(duplicates.document_bytes(document)) == document
    assert duplicates.stored_groups(document)[1].tolist() == ids.tolist()
    gone = np.zeros(10, dtype=bool)
    gone[[4, 3]] = True
    left = duplicates.without_items(document, gone)
    assert left["groups"] == [{"ids": [1, 6], "largest": None}, {"ids": [5, 9], "largest": 9}]
    assert document["groups"][0]["ids"] == [1, 4, 6]  # the input is left as it was
    group, ids = duplicates.stored_groups(left)
    assert group.tolist() == [0, 0, 1, 1] and ids.tolist() == [1, 6, 5, 9]


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


def test_the_screen_drops_candidates_but_no_pair_the_full_test_accepts(collection):
    """The 16-px screen on the stored ``pixels`` vectors must only save work: the pairs
    accepted with it are those accepted without it, and it compares fewer at 32 px."""
    bundle = Bundle.open(collection["work"] / "output" / "dups")

    def accepted(screen: float) -> tuple[set[tuple[int, int]], int]:
        pairs, compared = set(), 0
        for a, b, difference in duplicates.iter_pair_differences(bundle, screen=screen):
            compared += len(a)
            same = difference <= duplicates.MAX_DIFFERENCE
            pairs |= set(zip(a[same].tolist(), b[same].tolist()))
        return pairs, compared

    screened, compared = accepted(duplicates.SCREEN_DIFFERENCE)
    everything, candidates = accepted(np.inf)
    assert screened == everything and len(everything) >= len(collection["copy_of"])
    assert compared < candidates
    # negative control: a screen at 0 passes only pixel-identical pairs, so it loses copies
    strict, _ = accepted(0.0)
    assert len(strict) < len(everything)


def test_cells_decode_alike_in_worker_processes_and_in_this_one(collection, monkeypatch):
    bundle = Bundle.open(collection["work"] / "output" / "dups")
    boxes = duplicates.picture_boxes(duplicates.read_sizes(bundle), bundle.grid.cell_size,
                                     bundle.fit)
    items = np.arange(0, bundle.counts.items, 3)

    def pictures() -> tuple[np.ndarray, np.ndarray]:
        with bundle.open_cells() as cells:
            blocks = list(duplicates.read_pictures(cells, boxes, items,
                                                   bundle.grid.cell_size, n_jobs=2))
        return (np.concatenate([part for part, _ in blocks]),
                np.concatenate([block for _, block in blocks]))

    here = pictures()
    monkeypatch.setattr(duplicates, "_PROCESS_MIN", 0)
    monkeypatch.setattr(duplicates, "_BATCH", 7)  # several blocks, in order
    there = pictures()
    assert np.array_equal(here[0], items) and np.array_equal(there[0], items)
    assert np.array_equal(here[1], there[1]) and here[1].std() > 0
