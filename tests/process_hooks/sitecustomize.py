"""Test hooks for every Python process a test starts with
``PYTHONPATH=tests/process_hooks``: the pipeline's worker processes included,
which a test's monkeypatch cannot reach. Each hook is off unless its variable
is set.

- ``MOSAIC_FAKE_CPUS=N``: ``os.cpu_count()`` reports N, to check that nothing
  depends on the machine's core count (``make test-cpus CPUS=16``).
- ``MOSAIC_TEST_DECODE_LOG=FILE``: every image decode appends ``<pid> <path>`` to
  FILE, the id of the process that decodes and the image's path, before it decodes
  (one ``write`` of one line, so lines from several processes do not mix).
- ``MOSAIC_TEST_DECODE_GATE=DIR``: a decode of an image whose file name is also a
  file in DIR waits (after its log line, at most 120 s) until that file is removed:
  a test holds one chunk in a known worker while it kills that worker.
- ``MOSAIC_TEST_OFFLINE_WEIGHTS=1``: Keras's VGG16 fails to fetch the imagenet
  weights, and KerasHub a preset by name, as they do without internet.
"""

import os

_fake = int(os.environ.get("MOSAIC_FAKE_CPUS", "0") or 0)
if _fake > 0:
    os.cpu_count = lambda: _fake  # noqa: E731

if os.environ.get("MOSAIC_TEST_DECODE_LOG") or os.environ.get("MOSAIC_TEST_DECODE_GATE"):
    import time

    from mosaic.pipeline import thumbnail

    _decode_image = thumbnail.decode_image

    def _logged_decode_image(path, *args, **kwargs):
        if os.environ.get("MOSAIC_TEST_DECODE_LOG"):
            line = b"%d " % os.getpid() + os.fsencode(os.fspath(path)) + b"\n"
            descriptor = os.open(os.environ["MOSAIC_TEST_DECODE_LOG"],
                                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, line)
            finally:
                os.close(descriptor)
        if os.environ.get("MOSAIC_TEST_DECODE_GATE"):
            gate = os.path.join(os.environ["MOSAIC_TEST_DECODE_GATE"], os.path.basename(path))
            deadline = time.monotonic() + 120
            while os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.05)
        return _decode_image(path, *args, **kwargs)

    thumbnail.decode_image = _logged_decode_image

if os.environ.get("MOSAIC_TEST_OFFLINE_WEIGHTS"):
    from mosaic.pipeline.embed import _import_keras  # quiet, as Vgg16Embedder.load imports it

    keras = _import_keras()

    def _offline_vgg16(weights=None, **kwargs):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                            "[Errno -2] Name or service not known")
        raise AssertionError("only the imagenet path is exercised here")

    keras.applications.VGG16 = _offline_vgg16

    from keras_hub.src.utils import preset_utils

    def _offline_get_file(preset, path):
        raise OSError(f"HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries "
                      f"exceeded ({preset}/{path}: Name or service not known)")

    preset_utils.get_file = _offline_get_file
