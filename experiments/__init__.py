"""Command-line binaries: flags and `main` only; the work is in tff_pipeline."""
