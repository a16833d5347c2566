"""Side-feature files: read exactly, and every malformed one refused with its file and fix."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from xmtc_cli.data.features import features_file, read_features
from xmtc_cli.errors import DataError


def test_npy_and_safetensors_read_back_as_float32(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "train_features.npy", x)
    save_file({"features": x.astype(np.float16)}, str(tmp_path / "test_features.safetensors"))
    assert features_file(tmp_path, "train") == tmp_path / "train_features.npy"
    assert features_file(tmp_path, "valid") is None
    got = read_features(tmp_path / "train_features.npy", documents=4, width=3)
    assert got.dtype == np.float32 and np.array_equal(got, x)
    assert np.array_equal(read_features(features_file(tmp_path, "test"), documents=4), x)


@pytest.mark.parametrize("array, kwargs, fragment", [
    (np.zeros((3, 2)), {"documents": 4}, "has 3 rows for 4 documents"),
    (np.zeros((4, 2)), {"width": 5}, "width 2, the model was trained with 5"),
    (np.zeros(4), {}, "not [documents, D]"),
    (np.zeros((4, 0)), {}, "out of range"),
    (np.array([[1.0, 2.0], [np.nan, 0.0]]), {}, "row 2 (document 2) holds nan or inf"),
    (np.array([["a", "b"]]), {}, "not numbers"),
])
def test_malformed_features_are_refused(tmp_path, array, kwargs, fragment):
    path = tmp_path / "f.npy"
    np.save(path, array)
    with pytest.raises(DataError) as info:
        read_features(path, **kwargs)
    assert fragment in info.value.message and str(path) in info.value.message


def test_pickles_and_other_files_are_refused_without_loading_them(tmp_path):
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    text = tmp_path / "text.npy"
    text.write_text("1 2 3\n")
    for path in (pickled, text, tmp_path / "missing.npy"):
        with pytest.raises(DataError):
            read_features(path)


def test_two_files_for_one_split_are_ambiguous(tmp_path):
    np.save(tmp_path / "train_features.npy", np.zeros((1, 1)))
    save_file({"features": np.zeros((1, 1), np.float32)},
              str(tmp_path / "train_features.safetensors"))
    with pytest.raises(DataError, match="both"):
        features_file(tmp_path, "train")
