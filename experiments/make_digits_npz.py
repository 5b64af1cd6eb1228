"""Write the embedded digits data set, ``src/distree/data/digits.npz``, from scikit-learn's bundled copy.

Run once (needs scikit-learn, which distree itself does not); the result is committed as package
data and read with numpy alone by ``load_split("digits", ...)``:

    python experiments/make_digits_npz.py

The data: the test set (1,797 samples) of the UCI Optical Recognition of Handwritten Digits data
set, E. Alpaydin and C. Kaynak, 1998, https://doi.org/10.24432/C50P49, licensed CC BY 4.0. Each
sample is an 8x8 image of pixel counts 0..16 (a 32x32 bitmap counted in 4x4 blocks), stored
row-major as 64 uint8 values, with its digit 0..9.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SOURCE = (
    "UCI Optical Recognition of Handwritten Digits (test set, 1797 samples), E. Alpaydin and C. Kaynak, 1998, "
    "https://doi.org/10.24432/C50P49; licence CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); "
    "copied from scikit-learn's bundled digits.csv.gz, unmodified"
)
OUT = Path(__file__).resolve().parents[1] / "src" / "distree" / "data" / "digits.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    d = load_digits()
    data = d.data.astype(np.uint8)
    target = d.target.astype(np.uint8)
    if data.shape != (1797, 64) or not np.array_equal(data, d.data) or data.max() > 16:
        raise SystemExit(f"unexpected digits data: shape {d.data.shape}, range {d.data.min()}..{d.data.max()}")
    np.savez_compressed(args.out, data=data, target=target, source=np.array(SOURCE))
    back = np.load(args.out, allow_pickle=False)
    assert np.array_equal(back["data"], data) and np.array_equal(back["target"], target)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): data {data.shape} uint8, target {target.shape}")


if __name__ == "__main__":
    main()
