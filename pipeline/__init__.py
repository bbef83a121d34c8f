"""Transfer learning on frozen image embeddings.

The stage entry points sit here, one module per ``dvc.yaml`` stage, named by verb
(``python -m pipeline.<verb>``). Their library code sits below, in the order the
data flows, and imports only downward:

- ``common``: params, errors, atomic writes and the CLI wrapper every stage shares;
- ``data``: image files -> manifest, original pictures, leaks between splits;
- ``embed``: manifest -> frozen-backbone embeddings in ``features/`` (format and loader);
- ``evaluate``: embeddings -> trained classifiers, honest metrics, the leaderboard;
- ``reporting``: results -> one HTML page.
"""
