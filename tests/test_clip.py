"""Search by meaning: ``--embedding clip`` (issue 20, part 2).

No CLIP weights can be downloaded here, so the test trains its own: KerasHub's CLIP
architecture made tiny (tests/tiny_clip.py), fitted on generated pictures of coloured
shapes with their captions, and saved with ``save_to_preset``. The product then loads
it the one way it loads any model, ``--weights PATH``: the pipeline's decode workers
run its image tower, ``run.py similar --text`` and the search API its text tower. Each
caption must find its own pictures (precision@10 >= 0.9 for every caption), and the same
architecture with random weights must not (the negative control): the ranking comes
from what the model learned, not from the plumbing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_clip
from PIL import Image

from mosaic.bundle import read_manifest
from server import create_app

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "tests" / "process_hooks"
CID = "shapes"


def run_cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def assert_one_error_line(result: subprocess.CompletedProcess, contains: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert contains.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def work(clip_work) -> Path:
    """tests/conftest.py's ``clip_work``: the tiny CLIP models, the pictures and the
    ``shapes`` (trained) and ``control`` (random weights) bundles."""
    return clip_work


def precision_at_10(work: Path, cid: str) -> dict[str, float]:
    """Each caption's share of its own pictures among its 10 nearest items, by
    ``run.py similar --text`` (every caption in one call)."""
    queries = [tiny_clip.caption(*c) for c in tiny_clip.CLASSES]
    args = [arg for query in queries for arg in ("--text", query)]
    result = run_cli(work, "similar", "--id", cid, "-k", "10", "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = json.loads(result.stdout)
    return {query: np.mean([Path(r["source"]).stem.endswith(query[2:].replace(" ", "-"))
                            for r in rows if r["query"] == query]) for query in queries}


def test_text_search_finds_each_caption(work):
    precision = precision_at_10(work, CID)
    assert min(precision.values()) >= 0.9, precision


def test_random_weights_do_not(work):
    """The negative control: the same architecture, the same code, untrained."""
    precision = precision_at_10(work, "control")
    assert np.mean(list(precision.values())) < 0.5, precision


def test_manifest_records_the_model(work):
    embedding = read_manifest(work / "output" / CID)["embeddings"][0]
    assert embedding["kind"] == "clip" and embedding["metric"] == "angular"
    assert embedding["dtype"] == "float16" and embedding["dim"] == 32
    assert embedding["weights"] == str(work / "models" / "trained")  # absolute
    vectors = np.load(work / "output" / CID / embedding["vectors"]).astype(np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-2)


def test_search_api_by_meaning(work):
    app = create_app({"TESTING": True}, out_dir=work / "output")
    client = app.test_client()
    url = f"/api/collections/{CID}/search"
    body = client.get(url, query_string={"text": "a blue square", "mode": "meaning",
                                         "k": 10, "ids": "all"}).get_json()
    assert body["ok"] and body["total"] == 10 and len(body["ids"]) == 10
    assert body["embedding"] == "clip"
    distances = [item["distance"] for item in body["items"]]
    assert distances == sorted(distances)
    titles = [item["title"] for item in body["items"]]
    assert sum("blue-square" in t for t in titles) >= 9, titles
    keyword = client.get(url, query_string={"q": "anything"})  # FTS5 with TF loaded
    assert keyword.status_code == 200, keyword.get_json()
    for query, words in (({"mode": "meaning"}, "text"),
                         ({"mode": "meaning", "text": "x", "embedding": "pixels"}, "clip"),
                         ({"mode": "sideways", "q": "x"}, "mode")):
        response = client.get(url, query_string=query)
        assert response.status_code == 400 and words in response.get_json()["error"]


def test_collection_lists_clip_for_the_viewer(work):
    app = create_app({"TESTING": True}, out_dir=work / "output")
    body = app.test_client().get(f"/api/collections/{CID}").get_json()
    assert body["search_by_meaning"] == "clip"


def test_a_preset_name_without_internet_is_one_error(tmp_path):
    """No internet here (and the hook makes sure): one Error line that says what to do."""
    (tmp_path / "pictures").mkdir()
    Image.fromarray(tiny_clip.draw("red", "circle", np.random.default_rng(0))).save(
        tmp_path / "pictures" / "a.png")
    result = run_cli(tmp_path, "pipeline", "--images", "pictures", "--id", "x",
                     "--embedding", "clip", "--weights", "clip_vit_base_patch32",
                     env={"PYTHONPATH": str(HOOKS), "MOSAIC_TEST_OFFLINE_WEIGHTS": "1"})
    assert_one_error_line(result, "--weights PATH")
    result = run_cli(tmp_path, "pipeline", "--images", "pictures", "--id", "x",
                     "--embedding", "clip", "--weights", "models/none")
    assert_one_error_line(result, "no such folder")


def test_text_needs_a_clip_embedding(bundle):
    result = run_cli(bundle.parent, "similar", "--out", ".", "--id", bundle.name,
                     "--text", "a red circle")
    assert_one_error_line(result, "needs a clip embedding")
    result = run_cli(bundle.parent, "similar", "--out", ".", "--id", bundle.name)
    assert_one_error_line(result, "--text")
