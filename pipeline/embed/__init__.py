"""Manifest -> frozen-backbone embeddings cached in ``features/``, and the loader for reusing them."""
