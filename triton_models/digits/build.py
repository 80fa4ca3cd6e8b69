"""Build step of the digits model: train, measure, and pack the Triton artifact.

    python -m triton_models.digits.build --out var/build

writes digits.tar.gz (model.py + weights.npz: the python-format artifact the
appliance uploads) and digits-metrics.json (held-out accuracy). Deterministic:
the same inputs give the same weights and the same archive bytes.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from triton_models.packaging import pack_files

HERE = Path(__file__).resolve().parent
SCALE = 16.0  # pixel values of the digits data are 0..16
TEST_SIZE = 0.25
SEED = 0


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The train/test split the build and the tests share."""
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32), data.target, test_size=TEST_SIZE, random_state=SEED, stratify=data.target
    )
    return x_train, x_test, y_train, y_test


def train() -> tuple[dict[str, np.ndarray], float]:
    x_train, x_test, y_train, y_test = split()
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=SEED)
    clf.fit(x_train / SCALE, y_train)
    accuracy = float(clf.score(x_test / SCALE, y_test))
    weights = {
        "w1": clf.coefs_[0].astype(np.float32),
        "b1": clf.intercepts_[0].astype(np.float32),
        "w2": clf.coefs_[1].astype(np.float32),
        "b2": clf.intercepts_[1].astype(np.float32),
        "scale": np.float32(SCALE),
    }
    return weights, accuracy


def files(weights: dict[str, np.ndarray], model_source: bytes | None = None) -> dict[str, bytes]:
    """A version directory's files: model.py (ours, or a variant's) and the weights."""
    buf = io.BytesIO()
    np.savez(buf, **weights)
    return {"model.py": model_source or (HERE / "model.py").read_bytes(), "weights.npz": buf.getvalue()}


def pack(weights: dict[str, np.ndarray], model_source: bytes | None = None) -> bytes:
    """The artifact: those files in a .tar.gz."""
    return pack_files(files(weights, model_source))


def build(out: Path) -> float:
    """Writes digits.tar.gz and digits-metrics.json into out; returns the held-out accuracy."""
    out.mkdir(parents=True, exist_ok=True)
    weights, accuracy = train()
    (out / "digits.tar.gz").write_bytes(pack(weights))
    (out / "digits-metrics.json").write_text(json.dumps({"test_accuracy": accuracy, "test_size": TEST_SIZE}))
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent.parent / "var" / "build")
    args = parser.parse_args()
    accuracy = build(args.out)
    print(f"digits: held-out accuracy {accuracy:.4f}; artifact {args.out / 'digits.tar.gz'}")


if __name__ == "__main__":
    main()
