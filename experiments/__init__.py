"""Command-line binaries: flags and `main` only; the work is in tff_pipeline."""

from tff_pipeline import tf_noise

# Every binary runs as `python -m experiments.<name>`, which imports this
# package first: keep TF 2.14's three cuDNN/cuFFT/cuBLAS lines out of its
# output (see tff_pipeline/tf_noise.py and BUILD.md).
tf_noise.install()
