"""Search by meaning (issue 20): CLIP's image tower against VGG16, its text tower, and
the ranking of a text query at 1M items.

- ``towers``: images/s of a ViT-B/32 CLIP image tower (KerasHub's
  ``clip_vit_base_patch32`` architecture, random weights: the same operations as the
  real ones) and of VGG16 to ``fc2`` (random weights), both through mosaic's own
  embedders (``ClipEmbedder``, ``Vgg16Embedder``) on the same 224 px uint8 batches of
  the same size; then the warm latency of one text query through the text tower
  (``ClipEmbedder.embed_text``, as the server runs it once the model is loaded).
- ``rank``: the annoy index the pipeline builds for a clip embedding (angular, 20
  trees), over SYNTHETIC unit vectors (``--items`` x 512, drawn around 2,000 random
  centres: real image embeddings are clustered too), and the time of one query of
  ``-k`` items at a few ``search_k`` with its recall against the exact ranking (and the
  time of that exact ranking over the float16 vectors, a block at a time).

- ``route``: a text query end to end through the server's route
  (``GET /api/collections/<id>/search?mode=meaning&text=...``, in process, warm) on a
  synthetic bundle of ``--items`` with a ``clip`` embedding of that ViT-B/32 model
  (saved with ``save_to_preset`` under ``--work``, random weights; vectors as ``rank``
  draws them, written by ``bench/synth_bundle.py``), the first request (TensorFlow,
  the model and the index loaded) apart.

    python bench/clip_bench.py towers --batch 32 --batches 3
    python bench/clip_bench.py rank --items 1000000
    python bench/clip_bench.py route --items 1000000 --work /work/bench-data/clip-route
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosaic.pipeline.embed import ClipEmbedder, Vgg16Embedder, _import_keras  # noqa: E402

QUERIES = ["a photograph of a dog on a beach", "an old map of a harbour town",
           "a portrait of a woman in a red dress", "two boats at sunset",
           "a handwritten letter", "a cat sleeping on a chair"]


def vit_b32_clip():
    """(backbone, preprocessor): KerasHub's ViT-B/32 CLIP shapes, random weights. The
    tokenizer knows only the query words (no 49,408-word vocabulary without internet);
    the text encoder keeps the real vocabulary size and 77 tokens."""
    keras = _import_keras()
    import keras_hub

    keras.utils.set_random_seed(0)
    words = sorted({w for q in QUERIES for w in q.split()})
    vocabulary = {"!": 0}
    merges = []
    for word in words:  # each word one token, spelt by merges
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        for piece in pieces:
            vocabulary.setdefault(piece, len(vocabulary))
        joined = pieces[0]
        for piece in pieces[1:]:
            if f"{joined} {piece}" not in merges:
                merges.append(f"{joined} {piece}")
            joined += piece
            vocabulary.setdefault(joined, len(vocabulary))
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges)
    mean, std = np.array([0.481, 0.458, 0.408]), np.array([0.269, 0.261, 0.276])
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(224, 224), scale=list(1 / (255 * std)), offset=list(-mean / std))
    preprocessor = keras_hub.models.CLIPPreprocessor(tokenizer, converter, sequence_length=77)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=32, hidden_dim=768, num_layers=12, num_heads=12, intermediate_dim=3072,
        image_shape=(224, 224, 3))
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=49408, embedding_dim=512, hidden_dim=512, num_layers=12,
        num_heads=8, intermediate_dim=2048)
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=512)
    return keras, backbone, preprocessor


def images_per_second(embed, batch: np.ndarray, batches: int) -> float:
    embed(batch)  # warm-up: graph tracing and allocation
    start = time.perf_counter()
    for _ in range(batches):
        vectors = embed(batch)
    assert np.isfinite(vectors).all()
    return len(batch) * batches / (time.perf_counter() - start)


def towers(args) -> dict:
    keras, backbone, preprocessor = vit_b32_clip()
    clip = ClipEmbedder("clip_vit_base_patch32")
    clip.attach(keras, backbone, preprocessor)
    batch = np.random.default_rng(0).integers(0, 255, size=(args.batch, 224, 224, 3),
                                              dtype=np.uint8)
    result = {"batch": args.batch, "images": args.batch * args.batches}
    result["clip_vit_b32_images_per_s"] = round(images_per_second(clip.embed, batch,
                                                                  args.batches), 2)
    for query in QUERIES:  # warm-up
        clip.embed_text([query])
    times = []
    for _ in range(args.text_repeats):
        for query in QUERIES:
            start = time.perf_counter()
            clip.embed_text([query])
            times.append(time.perf_counter() - start)
    result["text_query_ms_median"] = round(1000 * statistics.median(times), 1)
    result["text_query_ms_p95"] = round(1000 * sorted(times)[int(0.95 * len(times))], 1)
    del clip, backbone
    vgg = Vgg16Embedder("none")
    vgg.load()
    result["vgg16_images_per_s"] = round(images_per_second(vgg.embed, batch, args.batches), 2)
    result["clip_over_vgg16"] = round(result["clip_vit_b32_images_per_s"]
                                      / result["vgg16_images_per_s"], 2)
    return result


def rank(args) -> dict:
    from annoy import AnnoyIndex

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, args.dim)).astype(np.float32)
    result = {"items": args.items, "dim": args.dim, "k": args.k, "synthetic": True}
    start = time.perf_counter()
    index = AnnoyIndex(args.dim, "angular")
    index.set_seed(0)
    vectors = np.empty((args.items, args.dim), np.float16)  # as the bundle stores them
    for first in range(0, args.items, 100_000):
        count = min(100_000, args.items - first)
        block = centres[rng.integers(0, len(centres), count)] \
            + 0.7 * rng.standard_normal((count, args.dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[first:first + count] = block
        for offset, row in enumerate(block):
            index.add_item(first + offset, row)
    index.build(args.trees, n_jobs=-1)
    with tempfile.TemporaryDirectory() as folder:  # memory-mapped, as the server has it
        path = os.path.join(folder, "clip.ann")
        index.save(path)
        result["build_s"] = round(time.perf_counter() - start, 1)
        result["index_bytes_per_item"] = round(os.path.getsize(path) / args.items)
        queries = centres[rng.integers(0, len(centres), 20)] \
            + 0.9 * rng.standard_normal((20, args.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        begin = time.perf_counter()
        exact = [set(top_k(vectors, q, args.k)) for q in queries]
        result["exact_ms_per_query"] = round(1000 * (time.perf_counter() - begin)
                                             / len(queries), 1)
        for search_k in args.search_k:
            times, recall = [], []
            for query, truth in zip(queries, exact, strict=True):
                begin = time.perf_counter()
                ids = index.get_nns_by_vector(query.tolist(), args.k, search_k=search_k)
                times.append(time.perf_counter() - begin)
                recall.append(len(truth & set(ids)) / args.k)
            result[f"search_k_{search_k}"] = {
                "ms_median": round(1000 * statistics.median(times), 1),
                "recall": round(float(np.mean(recall)), 3)}
        index.unload()
    return result


def route(args) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import synth_bundle

    from server import create_app

    work = args.work.resolve()
    preset, out, cid = work / "preset", work / "out", f"clip{args.items}"
    if not (preset / "config.json").exists():
        _, backbone, preprocessor = vit_b32_clip()
        backbone.save_to_preset(str(preset))
        preprocessor.save_to_preset(str(preset))
        del backbone, preprocessor
    if not (out / cid / "manifest.json").exists():
        begin = time.perf_counter()
        # 4-px cells: the route reads the index, the vectors and metadata.sqlite, not
        # the map, and 32-px cells of 1M items would need 3 GB of scratch
        synth_bundle.build(out, cid, args.items, clusters=2000, dim=512, cell_size=4,
                           clip_weights=str(preset))
        print(f"bundle built in {time.perf_counter() - begin:.0f} s", flush=True)
    client = create_app({"TESTING": True}, out_dir=str(out)).test_client()
    url = f"/api/collections/{cid}/search"

    def ask(text: str) -> float:
        begin = time.perf_counter()
        response = client.get(url, query_string={"mode": "meaning", "text": text,
                                                 "k": "100", "limit": "100"})
        elapsed = time.perf_counter() - begin
        body = response.get_json()
        assert response.status_code == 200 and len(body["items"]) == 100, body
        return elapsed

    first = ask(QUERIES[0])
    times = [ask(query) for _ in range(args.repeats) for query in QUERIES]
    return {"items": args.items, "bundle": cid, "k": 100,
            "first_request_s": round(first, 1),
            "request_ms_median": round(1000 * statistics.median(times), 1),
            "request_ms_p95": round(1000 * sorted(times)[int(0.95 * len(times))], 1),
            "requests": len(times),
            "search_k": json.loads((out / cid / "manifest.json").read_text())
            ["embeddings"][0]["search_k"]}


def top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """The exact ``k`` best cosines, a block of float16 rows at a time."""
    best = []
    for first in range(0, len(vectors), 200_000):
        scores = vectors[first:first + 200_000].astype(np.float32) @ query
        top = np.argpartition(-scores, k)[:k]
        best += [(float(scores[i]), first + int(i)) for i in top]
    return [i for _, i in sorted(best, reverse=True)[:k]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("towers")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--batches", type=int, default=3, help="timed batches per model")
    t.add_argument("--text-repeats", type=int, default=5)
    r = sub.add_parser("rank")
    r.add_argument("--items", type=int, default=1_000_000)
    r.add_argument("--dim", type=int, default=512)
    r.add_argument("--trees", type=int, default=20)
    r.add_argument("-k", type=int, default=100)
    r.add_argument("--search-k", type=int, nargs="+", default=[2000, 20000, 100000])
    q = sub.add_parser("route")
    q.add_argument("--items", type=int, default=1_000_000)
    q.add_argument("--work", type=Path, required=True, help="the preset and the bundle go here")
    q.add_argument("--repeats", type=int, default=10, help="rounds of the six queries")
    args = parser.parse_args()
    result = {"towers": towers, "rank": rank, "route": route}[args.command](args)
    result.update(command=args.command, cpus=os.cpu_count(), machine=platform.machine())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
