"""Embed stage: turn images (or the user's files) into vectors.

Kinds of ``--embedding``:

- ``vgg16``: Keras VGG16, the 4096-d ``fc2`` layer, fed 224 px inputs in batches.
- ``pixels`` (the default): the picture itself at 16 x 16 RGB (768-d), stored as
  uint8 (value x 255) like ``raw``, but squashed to the square instead of
  letterboxed in the cell: no white bars, so a copy of the picture at another
  aspect, size or crop still lands near it (with ``--fit fill``, the cell's centre
  square). Same-picture recall@5 0.99 against 0.81 for ``raw``
  (docs/benchmarks.md, "Neighbours that find the same picture").
- ``clip``: a CLIP-family model from KerasHub (CLIP or SigLIP, ``--weights PRESET|PATH``):
  its image tower's embedding, L2-normalised, of the same 224 px input as VGG16's,
  stored as float16. Its text tower answers searches by meaning (``embed_text``).
- ``raw``: the cell shrunk to 16 x 16 RGB (768-d), stored as uint8 (value x 255).
- ``file:PATH``: the user's vectors. A ``.npy`` of shape (n_inputs, dim) whose
  row i belongs to the i-th path of the sorted input list; or a CSV with a
  filename column and one numeric column per dimension.
- ``xy:PATH``: like ``file:`` but exactly 2-D; it is used as the layout as is.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosaic.errors import UsageError

VGG_INPUT_SIZE = 224
VGG_DIM = 4096
RAW_SIDE = 16
PIXELS_SIDE = 16
KINDS = ("vgg16", "clip", "pixels", "raw", "file", "xy")
PIXEL_KINDS = ("vgg16", "clip", "pixels", "raw")
MODEL_KINDS = ("vgg16", "clip")  # fed the decode's model input (VGG_INPUT_SIZE square)
# --weights' default: VGG16's imagenet weights, and for clip this preset (KerasHub's
# ViT-B/32 CLIP; downloaded from Kaggle on first use, so it needs internet once).
CLIP_DEFAULT_PRESET = "clip_vit_base_patch32"
# The KerasHub backbones ``clip`` accepts, and the preprocessor each one's preset holds.
CLIP_FAMILY = {"CLIPBackbone": "CLIPPreprocessor", "SigLIPBackbone": "SigLIPPreprocessor"}
# How each kind's vectors are stored in the bundle (docs/bundle.md): pixels and raw
# are exact as uint8 (read back x 1/255), vgg16 and clip as float16 (half of float32).
VECTOR_DTYPES = {"pixels": np.uint8, "raw": np.uint8, "vgg16": np.float16,
                 "clip": np.float16, "file": np.float32, "xy": np.float32}
VECTOR_SCALES = {"pixels": 1 / 255, "raw": 1 / 255}


def pixel_dims(kinds, weights: str = "imagenet") -> dict[str, int]:
    """Vector length of each pixel-based embedding among ``kinds``; ``clip``'s is read
    from its ``weights``' preset (``clip_dim``)."""
    dims = {"pixels": PIXELS_SIDE * PIXELS_SIDE * 3, "raw": RAW_SIDE * RAW_SIDE * 3,
            "vgg16": VGG_DIM}
    if "clip" in kinds:
        dims["clip"] = clip_dim(weights)
    return {kind: dims[kind] for kind in kinds if kind in dims}


def pixels_vectors(pictures: np.ndarray) -> np.ndarray:
    """The ``pixels`` embedding of uint8 (n, side, side, 3) pictures
    (``thumbnail.DecodedImage.picture``), as stored: uint8 (n, side * side * 3), a new
    array; the vector is this x ``VECTOR_SCALES['pixels']`` (1/255).

    Colour is kept as it is: standardising each channel (exposure and white balance
    dropped) gained 0.002 of recall in the benchmark but made a red and a blue
    picture of the same shapes neighbours, and the layout colour-blind.

    >>> pixels_vectors(np.zeros((2, 16, 16, 3), np.uint8)).shape
    (2, 768)
    """
    pictures = np.asarray(pictures, dtype=np.uint8)
    return pictures.reshape(len(pictures), -1).copy()


@dataclass(frozen=True)
class EmbeddingSpec:
    name: str  # unique, used in file names and the API
    kind: str  # one of KINDS
    path: str | None = None

    @property
    def from_pixels(self) -> bool:
        return self.kind in PIXEL_KINDS

    @property
    def metric(self) -> str:
        """The annoy metric for neighbour search."""
        return "angular" if self.kind in ("vgg16", "clip", "file") else "euclidean"


def parse_embedding_specs(values: list[str]) -> list[EmbeddingSpec]:
    """Parse the ``--embedding`` values; the first one drives the layout."""
    specs = []
    for value in values:
        kind, _, path = value.partition(":")
        if kind not in KINDS:
            raise UsageError(
                f"--embedding {value!r}: kind must be pixels, raw, vgg16, clip, file:PATH or "
                "xy:PATH"
            )
        if kind in ("file", "xy"):
            if not path:
                raise UsageError(f"--embedding {value!r} needs a path after '{kind}:'")
            if not os.path.isfile(path):
                raise UsageError(f"--embedding {value!r}: no such file {path}")
            name = f"{kind}-{Path(path).stem}"
        elif path:
            raise UsageError(f"--embedding {value!r}: {kind} takes no path")
        else:
            name = kind
        specs.append(EmbeddingSpec(name=name, kind=kind, path=path or None))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"--embedding given twice: {', '.join(names)}")
    if any(s.kind == "xy" for s in specs[1:]):
        raise UsageError("--embedding xy:PATH must come first: it is the layout")
    return specs


class Vgg16Embedder:
    """VGG16 up to ``fc2``. ``weights`` is 'imagenet', 'none' or a local weights file."""

    dim = VGG_DIM
    input_size = VGG_INPUT_SIZE

    def __init__(self, weights: str = "imagenet"):
        self.weights = weights
        self._model = None

    def load(self) -> None:
        """Build the model (imports TensorFlow; slow, so not done at import)."""
        keras = _import_keras()

        if self.weights == "imagenet":
            try:
                base = keras.applications.VGG16(weights="imagenet", include_top=True)
            except Exception as error:  # keras raises plain Exception on fetch failure
                raise UsageError(
                    "could not download the VGG16 imagenet weights "
                    f"({str(error).splitlines()[0][:120]}); pass --weights PATH to a local "
                    "vgg16 weights file (.h5 or .weights.h5), or --weights none"
                ) from None
        else:
            base = keras.applications.VGG16(weights=None, include_top=True)
            if self.weights != "none":
                if not os.path.isfile(self.weights):
                    raise UsageError(f"--weights {self.weights}: no such file")
                try:
                    base.load_weights(self.weights)
                except Exception as error:
                    raise UsageError(f"--weights {self.weights}: cannot load ({error})") from None
        self._model = keras.Model(base.input, base.get_layer("fc2").output)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (B, 224, 224, 3) RGB -> float32 (B, 4096)."""
        from keras.applications.vgg16 import preprocess_input

        if self._model is None:
            self.load()
        inputs = preprocess_input(batch.astype(np.float32))
        return np.asarray(self._model.predict_on_batch(inputs), dtype=np.float32)


def clip_weights(weights: str) -> str:
    """``--weights`` as ``clip`` reads it: a preset folder's absolute path (what a
    bundle's manifest records, so a server started elsewhere finds it), or a KerasHub
    preset name or handle; ``imagenet``, the flag's default (VGG16's), means
    ``CLIP_DEFAULT_PRESET``."""
    if weights == "imagenet":
        return CLIP_DEFAULT_PRESET
    if os.path.isdir(weights):
        return os.path.abspath(weights)
    if "://" not in weights and (os.sep in weights or weights.startswith(".")):
        raise UsageError(f"--weights {weights}: no such folder (clip needs a KerasHub "
                         "preset folder, saved with save_to_preset, or a preset name)")
    return weights


def read_clip_config(weights: str) -> dict:
    """The ``config.json`` of a clip preset (``clip_weights``): read as a file for a
    folder; a preset name is fetched through KerasHub, and without internet that is
    one UsageError that names ``--weights PATH``."""
    weights = clip_weights(weights)
    if os.path.isdir(weights):
        try:
            with open(os.path.join(weights, "config.json"), encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError) as error:
            raise UsageError(f"--weights {weights}: not a KerasHub preset folder "
                             f"(config.json: {error})") from None
    else:
        _import_keras()
        from keras_hub.src.utils.preset_utils import load_json

        try:
            config = load_json(weights)
        except Exception as error:  # requests, kagglehub and keras_hub raise their own
            first = str(error).splitlines()[0][:160] if str(error) else ""
            raise UsageError(
                f"--weights {weights}: cannot fetch the KerasHub preset "
                f"({type(error).__name__}: {first}); without internet, pass --weights PATH "
                "to a preset folder saved with save_to_preset") from None
    if config.get("class_name") not in CLIP_FAMILY:
        raise UsageError(f"--weights {weights}: a {config.get('class_name')} preset; clip "
                         f"needs one of {', '.join(CLIP_FAMILY)}")
    return config


def check_model_weights(kinds, weights: str) -> None:
    """Before any decode: UsageError if ``--weights`` cannot serve the model kinds among
    ``kinds`` (one flag, so vgg16 and clip together take only the default), or names a
    clip preset that cannot be read or fetched (``read_clip_config``)."""
    if "clip" not in kinds:
        return
    if "vgg16" in kinds and weights != "imagenet":
        raise UsageError(f"--weights {weights}: --embedding vgg16 and clip in one run share "
                         "--weights and then take only its default (imagenet, and "
                         f"{CLIP_DEFAULT_PRESET} for clip); compute them in separate runs")
    read_clip_config(weights)


def weights_signature(weights: str) -> list | None:
    """(size, mtime_ns) of a clip preset folder's weights file, for the decode's cache
    key: a model saved again in the same folder embeds again. None for a preset name."""
    if weights == "imagenet" or not os.path.isdir(weights):
        return None
    try:
        stat = os.stat(os.path.join(weights, "model.weights.h5"))
    except OSError as error:
        return [type(error).__name__]
    return [stat.st_size, stat.st_mtime_ns]


def clip_dim(weights: str) -> int:
    """The length of a clip preset's image (and text) vectors."""
    config = read_clip_config(weights)
    if config["class_name"] == "CLIPBackbone":
        return int(config["config"]["projection_dim"])
    return int(config["config"]["vision_encoder"]["config"]["hidden_dim"])


class ClipEmbedder:
    """A CLIP-family model from KerasHub (``CLIP_FAMILY``): ``embed`` runs the image tower
    (in the decode workers, in batches, as VGG16), ``embed_text`` the text tower (a
    search by meaning). Both return L2-normalised float32 rows, so the cosine of an
    image and a text is their dot product. ``weights`` as ``clip_weights`` reads it."""

    def __init__(self, weights: str = "imagenet"):
        self.weights = clip_weights(weights)
        self._image_model = self._text_model = self._preprocessor = None
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = clip_dim(self.weights)
        return self._dim

    def load(self) -> None:
        """Load the preset's backbone and preprocessor (imports TensorFlow; slow)."""
        read_clip_config(self.weights)  # a clear error before KerasHub's own
        keras = _import_keras()
        import keras_hub

        try:
            backbone = keras_hub.models.Backbone.from_preset(self.weights)
            preprocessor = getattr(keras_hub.models, CLIP_FAMILY[type(backbone).__name__]
                                   ).from_preset(self.weights)
        except Exception as error:
            raise UsageError(f"--weights {self.weights}: cannot load the KerasHub preset "
                             f"({type(error).__name__}: {str(error)[:200]})") from None
        self.attach(keras, backbone, preprocessor)

    def attach(self, keras, backbone, preprocessor) -> None:
        """Use this backbone and preprocessor (``load``; bench/clip_bench.py's random
        ones): each tower as its own Keras model, so one can run without the other."""
        images = keras.Input(shape=backbone.vision_encoder.image_shape, name="images")
        tokens = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        self._image_model = keras.Model(images, backbone.get_vision_embeddings(images))
        self._text_model = keras.Model(tokens, backbone.get_text_embeddings(tokens))
        self._preprocessor = preprocessor
        self._dim = int(self._image_model.output_shape[-1])

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (B, 224, 224, 3) RGB -> float32 (B, dim): resized and scaled by the
        preset's image converter to the tower's input, then embedded."""
        if self._image_model is None:
            self.load()
        inputs = self._preprocessor.image_converter(batch.astype(np.float32))
        return _unit_rows(self._image_model.predict_on_batch(inputs))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> float32 (len(texts), dim), tokenised by the preset's preprocessor."""
        if self._text_model is None:
            self.load()
        tokens = self._preprocessor({"prompts": list(texts), "images": None})["token_ids"]
        return _unit_rows(self._text_model.predict_on_batch(tokens))


def _unit_rows(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _import_keras():
    """Import Keras (and TensorFlow) without the lines TensorFlow's C++ side prints to
    stderr on import ("oneDNN custom operations are on", before its logging starts);
    errors still arrive as Python exceptions."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3: errors too (they raise)
    if "keras" in sys.modules:
        return sys.modules["keras"]
    _bind_sqlite_now()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras


def _bind_sqlite_now() -> None:
    """Bind Python's sqlite3 module to the system SQLite before TensorFlow loads: its
    libtensorflow_cc exports a SQLite of its own (without FTS5), and a sqlite3 call first
    made after that would bind to it (the server's keyword search then fails with "no
    such module: fts5" once the text tower is loaded). RTLD_NOW on the loaded module
    resolves all its calls at once, to the library it was linked with."""
    import _sqlite3

    try:
        ctypes.CDLL(_sqlite3.__file__, mode=os.RTLD_NOW | os.RTLD_NOLOAD)
    except (OSError, AttributeError):  # not a shared object here, or not on this platform
        pass


def read_user_vectors(spec: EmbeddingSpec, paths: list[str], missing_ok: bool = False
                      ) -> np.ndarray:
    """Load ``file:``/``xy:`` vectors as float32 (len(paths), dim), in input order.

    ``missing_ok`` (``--layout xy:``): an image without a CSV row gets a NaN row
    instead of an error."""
    assert spec.path is not None
    if spec.path.endswith(".npy"):
        try:
            vectors = np.load(spec.path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise UsageError(f"--embedding {spec.kind}:{spec.path}: {error}") from None
        if vectors.ndim != 2 or len(vectors) != len(paths):
            raise UsageError(
                f"--embedding {spec.kind}:{spec.path} has shape {vectors.shape}; expected "
                f"({len(paths)}, dim): one row per input image in sorted path order"
            )
    else:
        vectors = _read_vector_csv(spec, paths, missing_ok)
    vectors = np.asarray(vectors, dtype=np.float32)
    if spec.kind == "xy" and vectors.shape[1] != 2:
        raise UsageError(f"--embedding xy:{spec.path} must have 2 columns, not {vectors.shape[1]}")
    found = ~np.isnan(vectors).all(axis=1) if missing_ok else slice(None)
    if not np.isfinite(vectors[found]).all():
        raise UsageError(f"--embedding {spec.kind}:{spec.path} contains NaN or infinite values")
    return vectors


def _read_vector_csv(spec: EmbeddingSpec, paths: list[str], missing_ok: bool = False
                     ) -> np.ndarray:
    with open(spec.path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][0].strip() != "filename":
        raise UsageError(f"--embedding {spec.kind}:{spec.path}: first column must be 'filename'")
    by_name = {}
    for line, row in enumerate(rows[1:], start=2):
        try:
            by_name[row[0]] = [float(v) for v in row[1:]]
        except ValueError:
            raise UsageError(f"{spec.path} line {line}: non-numeric value") from None
    vectors = []
    for path in paths:
        vector = by_name.get(path) or by_name.get(os.path.basename(path))
        if vector is None and not missing_ok:
            raise UsageError(f"{spec.path} has no row for image {path}")
        vectors.append(vector)
    if len({len(v) for v in vectors if v is not None}) > 1:
        raise UsageError(f"{spec.path}: rows have different lengths")
    dim = next((len(v) for v in vectors if v is not None), 0)
    if not dim:
        raise UsageError(f"{spec.path} has no row for any image")
    return np.array([v if v is not None else [np.nan] * dim for v in vectors],
                    dtype=np.float32)
