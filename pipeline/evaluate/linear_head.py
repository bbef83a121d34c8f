"""The linear head of the transfer-learning recipe, trained on cached embeddings.

``Dropout`` + ``Linear(dim, n_classes)`` is exactly the module torchvision's
EfficientNet uses as ``classifier``, so the trained head's state dict loads into
``efficientnet_b1(num_classes=n).classifier`` unchanged. Wrapped as a
scikit-learn estimator so the same cross-validation code serves every classifier.

Training uses torch's public API only: ``AdamWStep`` is AdamW on the cross-entropy of a linear layer
written in public tensor operations (tested against autograd and ``torch.optim.AdamW``). Every random draw
(the initial weights, the batch order, the dropout masks) comes from generators seeded by ``seed``
and owned by ``fit``: torch's global generator is neither seeded nor advanced, so a fit does not
depend on what ran before it in the process, nor change what runs after it.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

log = logging.getLogger(__name__)


def _tensor(X: np.ndarray) -> torch.Tensor:
    """A float32 tensor owning its data (joblib hands workers read-only memory maps)."""
    return torch.from_numpy(np.array(X, dtype=np.float32))


def make_head(dim: int, n_classes: int, dropout: float, *, generator: torch.Generator) -> nn.Sequential:
    """The same layers, in the same order, as torchvision's EfficientNet classifier.

    ``generator``: where the ``Linear`` layer's initial weights are drawn from (``nn.Linear``'s own
    initialisation, uniform in +-1/sqrt(dim)), not torch's global generator.
    """
    linear = nn.Linear(dim, n_classes, device="meta").to_empty(device="cpu")  # nothing drawn yet
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)  # what reset_parameters draws
    bound = 1 / math.sqrt(dim)
    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
    return nn.Sequential(nn.Dropout(p=dropout, inplace=True), linear)


def dropout_(x: torch.Tensor, p: float, rng: np.random.Generator) -> torch.Tensor:
    """Inverted dropout as ``nn.Dropout`` in training, in place (zero with probability ``p``, scale the rest by
    1/(1-p)), its mask drawn by numpy's ``rng`` on the CPU: 1.6 times as fast as ``torch.rand`` there (149 against
    236 us for a 64 x 1280 batch, ``benchmarks/head_step.py``), and the same masks on every device."""
    if p == 0:
        return x
    keep = torch.from_numpy(rng.random(tuple(x.shape), dtype=np.float32) >= p).to(x.device)
    return x.mul_(keep).div_(1 - p)


class AdamWStep:
    """``AdamW(linear.parameters(), lr, weight_decay)`` steps on ``CrossEntropyLoss()(linear(x), y)``, in public
    tensor operations: the loss's gradient in closed form (softmax less the one-hot labels, over the batch) and
    AdamW's update (decoupled weight decay, bias-corrected moments, torch's defaults betas (0.9, 0.999) and eps
    1e-8) on one buffer holding the weight and the bias. The same arithmetic as autograd and ``torch.optim.AdamW``
    to float32 rounding (tested step by step); without their bookkeeping a step at batch 64 costs a fraction.
    ``linear``'s weight and bias become views of the buffer (detached from autograd): they follow every step.
    """

    def __init__(self, linear: nn.Linear, *, lr: float, weight_decay: float) -> None:
        size = linear.weight.numel()
        self.flat = torch.cat([linear.weight.detach().reshape(-1), linear.bias.detach()])
        self.weight, self.bias = self.flat[:size].view_as(linear.weight), self.flat[size:]
        linear.weight, linear.bias = nn.Parameter(self.weight, requires_grad=False), nn.Parameter(self.bias,
                                                                                                  requires_grad=False)
        self.grad = torch.zeros_like(self.flat)
        self.grad_weight, self.grad_bias = self.grad[:size].view_as(self.weight), self.grad[size:]
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.lr, self.weight_decay, self.beta1, self.beta2, self.eps, self.steps = lr, weight_decay, 0.9, 0.999, 1e-8, 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step on the batch; returns its mean loss (a 0-d tensor, where it was computed)."""
        log_p = torch.log_softmax(torch.addmm(self.bias, x, self.weight.t()), dim=1)
        picked = log_p.gather(1, y[:, None])
        grad_logits = log_p.exp_()
        grad_logits.scatter_add_(1, y[:, None], -torch.ones_like(picked)).div_(len(y))
        torch.mm(grad_logits.t(), x, out=self.grad_weight)
        torch.sum(grad_logits, 0, out=self.grad_bias)
        self.steps += 1
        self.flat.mul_(1 - self.lr * self.weight_decay)
        self.exp_avg.lerp_(self.grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(self.grad, self.grad, value=1 - self.beta2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - self.beta2 ** self.steps)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - self.beta1 ** self.steps))
        return -picked.mean()


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
        device = torch.device(self.device)
        # the initial weights, then the batch order, from one torch generator; the dropout masks from numpy's
        generator, masks = torch.Generator().manual_seed(self.seed), np.random.default_rng(self.seed)
        head = make_head(X.shape[1], n_classes, self.dropout, generator=generator).to(device)
        linear = head[1]
        step = AdamWStep(linear, lr=self.lr, weight_decay=self.weight_decay)
        X_t, y_t = _tensor(X).to(device), torch.as_tensor(np.array(y), dtype=torch.long).to(device)
        if X_valid is not None:
            Xv, yv = _tensor(X_valid).to(device), torch.as_tensor(np.array(y_valid), dtype=torch.long).to(device)
        best_loss, best_state, best_epoch, waited = float("inf"), None, self.max_epochs, 0
        history = []
        for epoch in range(1, self.max_epochs + 1):
            total = torch.zeros((), device=device)
            for batch in torch.randperm(len(X_t), generator=generator).to(device).split(self.batch_size):
                x = dropout_(X_t.index_select(0, batch), self.dropout, masks)
                total += step(x, y_t.index_select(0, batch)) * len(batch)
            row = {"epoch": epoch, "train_loss": total.item() / len(X_t)}
            if X_valid is not None:
                with torch.no_grad():
                    logits = linear(Xv)  # dropout is off in evaluation
                    valid_loss = nn.functional.cross_entropy(logits, yv).item()
                row.update(valid_loss=valid_loss, valid_accuracy=(logits.argmax(1) == yv).float().mean().item())
                if valid_loss < best_loss - 1e-6:
                    best_loss, best_state, best_epoch, waited = valid_loss, copy.deepcopy(head.state_dict()), epoch, 0
                else:
                    waited += 1
            history.append(row)
            if X_valid is not None and waited >= self.patience:
                break
        if best_state is not None:
            head.load_state_dict(best_state)
        # kept as arrays: the model file (skops) stores data, never torch objects
        self.coef_, self.intercept_ = (p.detach().cpu().numpy().copy() for p in (linear.weight, linear.bias))
        self.best_epoch_ = best_epoch
        self.history_ = history
        log.info("linear head: %d epochs run, best epoch %d", len(history), best_epoch)
        return self

    @property
    def head_(self) -> nn.Sequential:
        """The trained ``Dropout`` + ``Linear`` on the CPU, in eval mode, holding ``coef_`` and ``intercept_``."""
        linear = nn.Linear(self.coef_.shape[1], self.coef_.shape[0], device="meta").to_empty(device="cpu")
        linear.weight.data, linear.bias.data = torch.from_numpy(self.coef_), torch.from_numpy(self.intercept_)
        return nn.Sequential(nn.Dropout(p=self.dropout, inplace=True), linear).eval()

    def logits(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.head_(_tensor(X)).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.as_tensor(self.logits(X)), dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(axis=1)
