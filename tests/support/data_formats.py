"""Data files in their real formats, written clean-room for tests: EDM's dataset zip (`dataset_tool.py`
layout) and the CIFAR-10 python tarball (Python 2 cPickle batches)."""
import io
import json
import pickle
import struct
import tarfile
import zipfile

import numpy as np
from PIL import Image


def write_edm_zip(path, images, labels):
    """Like dataset_tool.py: ZIP_STORED, PNG compress_level 0, 00000/img00000000.png, dataset.json."""
    names = [f"{i:08d}"[:5] + f"/img{i:08d}.png" for i in range(len(images))]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, image in reversed(list(zip(names, images))):  # reversed: the reader must sort
            pixels = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
            buffer = io.BytesIO()
            Image.fromarray(pixels.numpy()).save(buffer, format="png", compress_level=0)
            archive.writestr(name, buffer.getvalue())
        table = None if labels is None else [[name, int(label)] for name, label in zip(names, labels)]
        archive.writestr("dataset.json", json.dumps({"labels": table}))


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), like cPickle protocol 2."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    # Python 2 with numpy 1.x names the reconstructor numpy.core.multiarray.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batches(per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch).tolist())
            for _ in range(6)]


def write_cifar_tarball(path, batches, writer=py2_pickle, first_entry=None):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as archive:
        for name, (rows, labels) in zip(names, batches):
            batch = {} if first_entry is None else {"batch_label": first_entry}
            batch.update({"batch_label": batch.get("batch_label", f"{name} of 6"), "labels": labels,
                          "data": rows, "filenames": [f"img_{i}.png" for i in range(len(labels))]})
            payload = writer(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
