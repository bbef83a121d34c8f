"""Where a backbone comes from: one adapter per source (torchvision, timm, a user's exported file).

Each adapter answers the same small questions for ``pipeline.embed.backbone``:
which keys its params entry has (a dataclass), whether an entry can be built
(cheap checks, run by ``prepare``), and how to build the frozen model, its
preprocessing and what to record about it in ``meta.json``.
"""
