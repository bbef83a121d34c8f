"""Embeddings -> trained classifiers, grouped-CV and held-out metrics with intervals, the leaderboard."""
