"""Datasets, decoding, the paper's preprocessing and augmentation, and the bundled demo set."""
