"""A CLIP small enough to train inside the test suite, and the pictures it learns.

The model is KerasHub's own CLIP architecture (``CLIPBackbone`` with a
``CLIPVisionEncoder`` and a ``CLIPTextEncoder``, and a ``CLIPPreprocessor`` with a
``CLIPTokenizer`` and a ``CLIPImageConverter``), only tiny: 32 px images in 4 px
patches, two transformer layers of width 64 for the pictures and one for the text,
and a byte-pair vocabulary built for the caption words. ``train`` fits it with
CLIP's contrastive loss on generated pictures of coloured shapes with their
captions ("a red circle"), 500 steps in about a minute on two cores (300 left two
captions at precision@10 0.6 on an AMD EPYC machine; 500 gave 1.0 for every caption
there with three training seeds); ``save`` writes it with KerasHub's ``save_to_preset``,
so the product loads it through ``--weights PATH`` exactly as it would load a
downloaded preset. ``build(seed)`` unsaved and untrained is the
negative control: the same architecture with random weights.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 60, 220),
           "yellow": (235, 210, 20)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [(colour, shape) for colour in COLOURS for shape in SHAPES]
SIDE = 64  # the generated pictures; the model sees them at IMAGE_SIDE
IMAGE_SIDE = 32
SEQUENCE_LENGTH = 8


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def draw(colour: str, shape: str, rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """uint8 (side, side, 3): one shape of that colour, at a random place and size, on a
    random light background with a little noise."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    radius = rng.uniform(0.22, 0.36) * side
    cy, cx = rng.uniform(radius, side - radius, size=2)
    if shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    elif shape == "square":
        half = radius * 0.85
        mask = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    else:  # an upward triangle inside the circle's box
        top, bottom = cy - radius, cy + radius
        width = (yy - top) / (2 * radius) * radius
        mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= width)
    background = rng.uniform(200, 255, size=3)
    picture = np.broadcast_to(background, (side, side, 3)).copy()
    shade = np.asarray(COLOURS[colour], np.float32) * rng.uniform(0.85, 1.1)
    picture[mask] = shade
    picture += rng.normal(0, 6, size=picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8)


def pictures(per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(images uint8 (n, SIDE, SIDE, 3), captions), class by class."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for (colour, shape), _ in itertools.product(CLASSES, range(per_class)):
        images.append(draw(colour, shape, rng))
        captions.append(caption(colour, shape))
    return np.stack(images), captions


def _vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-pair vocabulary and merges that spell every caption word as one token.

    Id 0 is a spare character (KerasHub pads with 0), and the start and end tokens
    take the two largest ids: CLIP's text pooler reads the position of the largest id,
    the end token, as in the real 49,408-word vocabulary."""
    words = sorted({word for c in CLASSES for word in caption(*c).split()})
    tokens, merges = ["!"], []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        for piece in pieces:
            if piece not in tokens:
                tokens.append(piece)
        joined = pieces[0]
        for piece in pieces[1:]:
            merge = f"{joined} {piece}"
            joined += piece
            if merge not in merges:
                merges.append(merge)
            if joined not in tokens:
                tokens.append(joined)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def build(seed: int = 0):
    """(backbone, preprocessor): a tiny randomly initialised CLIP and its preprocessing."""
    from mosaic.pipeline.embed import _import_keras

    keras = _import_keras()  # first, as the product loads it (quiet, SQLite bound first)
    import keras_hub
    keras.utils.set_random_seed(seed)
    vocabulary, merges = _vocabulary()
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges)
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(IMAGE_SIDE, IMAGE_SIDE), scale=2 / 255, offset=-1.0, antialias=True)
    preprocessor = keras_hub.models.CLIPPreprocessor(
        tokenizer, converter, sequence_length=SEQUENCE_LENGTH)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=4, hidden_dim=64, num_layers=2, num_heads=2, intermediate_dim=128,
        image_shape=(IMAGE_SIDE, IMAGE_SIDE, 3))
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=len(vocabulary), embedding_dim=64, hidden_dim=64, num_layers=1,
        num_heads=2, intermediate_dim=128, max_sequence_length=SEQUENCE_LENGTH)
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=32)
    return backbone, preprocessor


def train(backbone, preprocessor, steps: int = 500, batch: int = 48, seed: int = 1) -> None:
    """Fit with CLIP's symmetric contrastive loss; pictures of the same caption in one
    batch are all right answers (soft targets)."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    optimizer = keras.optimizers.Adam(2e-3)
    variables = backbone.trainable_variables

    @tf.function
    def step(images, tokens, labels):
        same = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
        targets = same / tf.reduce_sum(same, axis=1, keepdims=True)
        with tf.GradientTape() as tape:
            out = backbone({"images": images, "token_ids": tokens}, training=True)
            loss = (tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                        targets, out["vision_logits"]))
                    + tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                        targets, out["text_logits"]))) / 2
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    tokens_of = {}
    for index, (colour, shape) in enumerate(CLASSES):
        tokens_of[index] = preprocessor(
            {"prompts": [caption(colour, shape)], "images": None})["token_ids"][0]
    for _ in range(steps):
        labels = rng.integers(0, len(CLASSES), size=batch)
        images = np.stack([draw(*CLASSES[k], rng) for k in labels])
        images = preprocessor.image_converter(images.astype(np.float32))
        tokens = tf.stack([tokens_of[int(k)] for k in labels])
        step(images, tokens, tf.constant(labels))


def save(backbone, preprocessor, folder: Path) -> Path:
    """The model as a KerasHub preset folder (``save_to_preset``): what ``--weights
    PATH`` reads."""
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    return folder
