"""Corpus definitions (the spec registry) and the reading side of prepared datasets."""
