#!/usr/bin/env bash
# Make the CPNet toy dataset and prepare it into HDF5 shards (original size, lossless input).
set -euo pipefail
out=${1:-data}
vcorr toy "$out/toy"
vcorr prepare --format list --annotations "$out/toy/annotations.csv" \
    --labels "$out/toy/classes.txt" --root "$out/toy" --out "$out/toy_h5" --short-side 0 --workers 2
vcorr inspect "$out/toy_h5" --verify
