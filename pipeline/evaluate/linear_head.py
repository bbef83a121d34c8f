"""The linear head of the transfer-learning recipe, trained on cached embeddings.

``Dropout`` + ``Linear(dim, n_classes)`` is exactly the module torchvision's
EfficientNet uses as ``classifier``, so the trained head's state dict loads into
``efficientnet_b1(num_classes=n).classifier`` unchanged. Wrapped as a
scikit-learn estimator so the same cross-validation code serves every classifier.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from pipeline.evaluate import _torch_stream
from pipeline.evaluate.head_step import standalone, training_step

log = logging.getLogger(__name__)


def _tensor(X: np.ndarray) -> torch.Tensor:
    """A float32 tensor owning its data (joblib hands workers read-only memory maps)."""
    return torch.from_numpy(np.array(X, dtype=np.float32))


def make_head(dim: int, n_classes: int, dropout: float) -> nn.Sequential:
    """The same layers, in the same order, as torchvision's EfficientNet classifier."""
    return nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(dim, n_classes))


def _in_one_pass(x: torch.Tensor, p: float) -> bool:
    """Whether dropout on ``x`` runs as ``_torch_stream.dropped_rows``: on the CPU, contiguous float32, 0 < p < 1,
    with a torch whose draw it matches; anywhere else (a GPU, say) torch's own dropout runs."""
    return (0 < p < 1 and x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
            and _torch_stream.matches_torch())


def _kept_value(keep: float) -> float:
    """What dropout's ``div_(keep)`` makes of a kept element (a 1), in float32, computed by torch itself."""
    return torch.ones(1).div_(keep).item()


def dropout_(x: torch.Tensor, p: float) -> torch.Tensor:
    """``nn.Dropout(p, inplace=True)`` in training, bit for bit; on the CPU in a fraction of its time.

    On the CPU torch draws the mask with ``bernoulli_(1 - p)``: a serial kernel, one double from the
    default generator per element, over half of a training step at batch 64. ``_torch_stream.dropped_rows``
    draws the very same mask from the same generator in compiled loops and scales ``x`` in place by it, as
    dropout's ``div_`` and ``mul_`` do. Tests compare outputs and the generator's state with ``nn.Dropout``'s.
    """
    if not _in_one_pass(x, p):
        return torch.nn.functional.dropout(x, p, training=True, inplace=True)
    flat = x.detach().numpy().reshape(1, -1)  # x's own memory
    # into a new array, then back: written in place, the loop does not vectorise (3 times slower, measured)
    flat[:] = _torch_stream.dropped_rows(flat, np.zeros(1, dtype=np.int64), 1 - p, _kept_value(1 - p),
                                         np.empty_like(flat))
    return x


def dropped_batches(X: torch.Tensor, p: float, batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of a batch's row indices: ``dropout_(X.index_select(0, batch), p)``, bit for bit.

    Where dropout runs in one pass, it gathers the rows, draws the mask and scales them in that pass, into one
    buffer reused from batch to batch (autograd is done with the last batch by then).
    """
    if not _in_one_pass(X, p):
        return lambda batch: dropout_(X.index_select(0, batch), p)
    keep, rows, scale = 1 - p, X.numpy(), _kept_value(1 - p)
    buffer = np.empty((batch_size, X.shape[1]), dtype=np.float32)
    return lambda batch: torch.from_numpy(_torch_stream.dropped_rows(rows, batch.numpy(), keep, scale,
                                                                     buffer[:len(batch)]))


class LinearHeadClassifier(ClassifierMixin, BaseEstimator):
    """Cross-entropy + AdamW on embeddings; early stopping on a validation set when given.

    Without a validation set it trains for exactly ``max_epochs`` epochs (used in
    cross-validation, with the epoch count early stopping chose on valid).
    """

    def __init__(self, *, n_classes: int | None = None, dropout: float = 0.2, lr: float = 1e-3,
                 weight_decay: float = 1e-2, batch_size: int = 64, max_epochs: int = 300,
                 patience: int = 30, seed: int = 0, device: str = "cpu") -> None:
        self.n_classes = n_classes
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.device = device  # where it trains; the fitted head is kept on the CPU, where it predicts

    def fit(self, X: np.ndarray, y: np.ndarray, *, X_valid: np.ndarray | None = None,
            y_valid: np.ndarray | None = None) -> LinearHeadClassifier:
        n_classes = self.n_classes or int(np.max(y)) + 1
        self.classes_ = np.arange(n_classes)
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        device = torch.device(self.device)
        head = make_head(X.shape[1], n_classes, self.dropout).to(device)
        loss_fn = nn.CrossEntropyLoss()  # the valid loss; training_step computes the same loss on each batch
        X_t, y_t = _tensor(X).to(device), torch.as_tensor(np.array(y), dtype=torch.long).to(device)
        has_valid = X_valid is not None
        if has_valid:
            Xv = _tensor(X_valid).to(device)
            yv = torch.as_tensor(np.array(y_valid), dtype=torch.long).to(device)
        best_loss, best_state, best_epoch, waited = float("inf"), None, self.max_epochs, 0
        history = []
        dropped = dropped_batches(X_t, head[0].p, self.batch_size)
        # AdamW's zero_grad, loss_fn(head[1](x), y).backward() and step, with the same bits, faster
        step = training_step(head[1], lr=self.lr, weight_decay=self.weight_decay,
                             batch_sizes=[min(self.batch_size, len(X_t)), len(X_t) % self.batch_size or self.batch_size])
        for epoch in range(1, self.max_epochs + 1):
            head.train()
            total = 0.0
            for batch in torch.randperm(len(X_t), generator=generator).to(device).split(self.batch_size):
                # head(X[batch]) for make_head's [Dropout, Linear], with the same bits, faster
                total += step(dropped(batch), y_t.index_select(0, batch)) * len(batch)
            row = {"epoch": epoch, "train_loss": total / len(X_t)}
            if has_valid:
                head.eval()
                with torch.no_grad():
                    logits = head(Xv)
                    valid_loss = loss_fn(logits, yv).item()
                row.update(valid_loss=valid_loss, valid_accuracy=(logits.argmax(1) == yv).float().mean().item())
                if valid_loss < best_loss - 1e-6:
                    best_loss, best_state, best_epoch, waited = valid_loss, copy.deepcopy(head.state_dict()), epoch, 0
                else:
                    waited += 1
            history.append(row)
            if has_valid and waited >= self.patience:
                break
        if best_state is not None:
            head.load_state_dict(best_state)
        standalone(head)
        self.head_ = head.cpu().eval()
        self.best_epoch_ = best_epoch
        self.history_ = history
        log.info("linear head: %d epochs run, best epoch %d", len(history), best_epoch)
        return self

    @classmethod
    def from_head(cls, head: nn.Sequential) -> LinearHeadClassifier:
        """A fitted classifier around a saved head (for prediction; nothing to train)."""
        model = cls(n_classes=head[-1].out_features, dropout=head[0].p)
        model.classes_ = np.arange(model.n_classes)
        model.head_ = head.eval()
        return model

    def logits(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.head_.eval()(_tensor(X)).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.as_tensor(self.logits(X)), dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(axis=1)
