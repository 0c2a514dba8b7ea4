"""One ``Evaluator``: metrics of a model on one split, fast enough to run hundreds of times.

Inputs are moved to the device once, at construction; every call then runs batched
forward passes under ``torch.inference_mode`` and computes accuracy, macro-F1, mean
cross-entropy loss and any user metric from the collected logits.

A split whose labels are one per token (``y`` of shape (N, T): a language model's next
tokens) is evaluated token by token: the loss is the mean cross-entropy over all N·T
predicted tokens, the perplexity its exponential (not a mean of per-sequence
perplexities), the accuracy the share of tokens predicted right; logits are reduced batch
by batch and never held for the whole split.

With ``subset=n`` a seeded, stratified-by-chance sample of ``n`` examples is used
instead of the whole split, and every result carries a confidence interval for its
accuracy (Wilson score interval by default, or a percentile bootstrap) so that a
decision taken on the subset can be checked against its noise.

Per-example results: :attr:`Evaluator.index` says which examples of the split were
evaluated (in evaluation order; :func:`subset_indices`), :attr:`Evaluator.correct` which of
them the last evaluation got right, and :func:`pack_bits` /
:func:`unpack_bits` store such a vector in 1 bit per example. Two models judged on the same
examples compare with :func:`paired_drop_interval`.
"""

from __future__ import annotations

import base64
import functools
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from prunescope.data.types import Split
from prunescope.device import resolve_device
from prunescope.errors import UsageError

Metric = Callable[[torch.Tensor, torch.Tensor], float]
"""A user metric: ``metric(logits (N, C), labels (N,)) -> float``."""

LOWER_IS_BETTER = ("loss", "perplexity")
# Logits held at once when evaluating a language model: batch · tokens · vocabulary (float32: 256 MiB).
_LOGITS_BUDGET = 1 << 26


def token_level(split: Split) -> bool:
    """Whether ``split``'s labels are one per token (a language model's next tokens, ``y`` of shape (N, T))."""
    return split.y.dim() == 2


def prediction_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` (N, C) against ``labels`` (N,), or per token of (N, T, V) against (N, T).

    The one training and scoring loss: a language model's loss is the mean over every predicted token.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           label_smoothing=label_smoothing, reduction=reduction)


@dataclass(frozen=True)
class Metrics:
    """Metrics of one evaluation. accuracy and macro_f1 are fractions in [0, 1]; loss in nats.

    For a language model (labels per token): n counts sequences, accuracy and its interval
    are over tokens, loss is the mean token cross-entropy, ``extra["perplexity"]`` its
    exponential and ``extra["tokens"]`` the tokens scored; macro_f1 is None (not defined
    over a vocabulary).
    """

    accuracy: float
    macro_f1: float | None
    loss: float
    n: int
    accuracy_ci: tuple[float, float]
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def get(self, name: str) -> float:
        """A metric by name (``accuracy``, ``macro_f1``, ``loss``, ``perplexity`` or a user metric), as measured."""
        if name == "perplexity" and name not in self.extra:
            return math.exp(self.loss)
        if name in ("accuracy", "macro_f1", "loss"):
            value = getattr(self, name)
            if value is None:
                raise UsageError(f"{name} is not defined for this evaluation (a language model): use perplexity")
            return value
        if name in self.extra:
            return self.extra[name]
        raise UsageError(f"unknown metric {name!r}: use accuracy, macro_f1, loss, perplexity or one of "
                         f"{sorted(self.extra)}")

    def score(self, name: str) -> float:
        """``name`` as a score, higher is better, the form scans, picks and comparisons optimise:
        the metric itself, or, for a lower-is-better one, minus the log of perplexity (= minus the loss)."""
        return -self.loss if name in LOWER_IS_BETTER else self.get(name)


_Z95 = statistics.NormalDist().inv_cdf(0.975)


def subset_indices(size: int, n: int | None, seed: int) -> np.ndarray:
    """Indices (int64, shape ``(min(n, size),)``) of the seeded subset of ``n`` examples of a split of ``size``.

    The first ``n`` of one seeded permutation, so that a larger subset holds every smaller
    one of the same seed; ``n`` None or at least ``size``: every example, in order.
    """
    if n is None or n >= size:
        return np.arange(size, dtype=np.int64)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].numpy().astype(np.int64)


def pack_bits(correct: np.ndarray | torch.Tensor) -> str:
    """A boolean vector (N,) as text: ``np.packbits`` (8 examples a byte), base64."""
    array = correct.cpu().numpy() if isinstance(correct, torch.Tensor) else np.asarray(correct)
    return base64.b64encode(np.packbits(array.astype(bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The boolean vector (``n``,) that :func:`pack_bits` wrote."""
    packed = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(packed, count=n).astype(bool)


def population_correction(n: int, full: int) -> float:
    """Finite-population correction: n of ``full`` examples estimate the value on all ``full``."""
    return math.sqrt(max(full - n, 0) / (full - 1)) if full > 1 else 0.0


def paired_drop_interval(lost: float, gained: float, n: int, full: int | None = None) -> tuple[float, float]:
    """95% interval of the drop ``(lost - gained) / n`` between two models judged on the same ``n`` examples.

    ``lost``: examples the reference got right and the other wrong; ``gained``: the reverse.
    Bonett & Price (2012), adjusted Wald interval for a difference of paired proportions
    (the interval that goes with McNemar's test): one pseudo-count added to each discordant
    cell, so that it does not collapse to a point when the models agree on every example.
    Without ``full`` it bounds the drop on the distribution the examples were drawn from;
    with ``full``, the drop on the ``full`` examples the ``n`` were drawn from
    (finite-population correction: no width at ``n == full``).
    """
    worse, better = (lost + 1) / (n + 2), (gained + 1) / (n + 2)
    drop = worse - better
    half = _Z95 * math.sqrt(max(worse + better - drop * drop, 0.0) / (n + 2))
    if full is not None:
        half *= population_correction(n, full)
    return drop - half, drop + half


def paired_drop(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """``(drop, low, high)`` of ``other`` against ``reference``, both per-example correctness on the same examples.

    drop: the accuracy difference (a fraction, positive when ``other`` is worse); low / high:
    :func:`paired_drop_interval` (no finite-population correction).
    """
    n = len(reference)
    if n == 0:
        return 0.0, -1.0, 1.0
    lost, gained = int((reference & ~other).sum()), int((~reference & other).sum())
    low, high = paired_drop_interval(lost, gained, n)
    return (lost - gained) / n, low, high


def paired_gain_interval(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """95% interval of the mean gain ``after - before`` of per-example scores measured on the same examples.

    Real-valued scores (a language model's minus loss per sequence): the normal interval of the
    mean of the paired differences. Booleans (right / wrong): Bonett & Price's interval
    (:func:`paired_drop_interval`), turned from a drop into a gain.
    """
    if before.dtype == bool:
        _, low, high = paired_drop(before, after)
        return -high, -low
    n = len(before)
    if n < 2:
        return -math.inf, math.inf
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    half = _Z95 * float(diff.std(ddof=1)) / math.sqrt(n)
    return float(diff.mean()) - half, float(diff.mean()) + half


@functools.cache
def _normal_quantile(confidence: float) -> float:
    # scipy's ppf costs tens of microseconds: as much as a small model's whole evaluation.
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (E. B. Wilson, 1927)."""
    if n == 0:
        return (0.0, 1.0)
    z = _normal_quantile(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    correct: np.ndarray, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (0/1 per example)."""
    if len(correct) == 0:
        return (0.0, 1.0)
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(resamples, len(correct)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean F1 over the classes present in labels or predictions (scikit-learn's rule)."""
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes).double()
    true_positive = confusion.diag()
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    present = (support + predicted) > 0
    f1 = 2 * true_positive / (support + predicted).clamp_min(1)
    return float(f1[present].mean())


class Evaluator:
    """Evaluate ``model`` on ``split``.

    Args:
        model: the network; moved to ``device``, put in eval mode during a call and its
            training flag restored after.
        split: inputs (N, ...) and labels (N,).
        device: ``auto``, ``cpu``, ``cuda``…
        batch_size: examples per forward pass.
        subset: evaluate a seeded random sample of this many examples (None: all).
        seed: seed of the subset sample and of the bootstrap.
        metrics: extra named metrics ``f(logits, labels) -> float``.
        interval: ``wilson`` or ``bootstrap`` confidence interval of the accuracy.
        confidence: confidence level of that interval.
    """

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 1024,
        subset: int | None = None,
        seed: int = 0,
        metrics: Mapping[str, Metric] | None = None,
        interval: str = "wilson",
        confidence: float = 0.95,
    ) -> None:
        if interval not in ("wilson", "bootstrap"):
            raise UsageError(f"unknown interval {interval!r}: use wilson or bootstrap")
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.batch_size = batch_size
        self.metrics = dict(metrics or {})
        self.interval = interval
        self.confidence = confidence
        self.seed = seed
        if subset is not None and subset < 1:
            raise UsageError(f"subset must be a positive number of examples, got {subset}")
        self.index = subset_indices(len(split), subset, seed)  # which examples of ``split``, in evaluation order
        x, y = split.x, split.y
        if len(self.index) < len(split):
            x, y = x[torch.from_numpy(self.index)], y[torch.from_numpy(self.index)]
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.correct: torch.Tensor | None = None  # per example of the last evaluation: was it right? (N,) bool
        self.sequence_loss: torch.Tensor | None = None  # language models: mean token loss per sequence (N,)
        self.num_classes = int(split.y.max()) + 1 if len(split) else 0
        self.token_level = token_level(split)

    def __len__(self) -> int:
        return len(self.y)

    def logits(self) -> torch.Tensor:
        """Logits (N, C) of the model on the cached inputs."""
        was_training = self.model.training
        # eval() and train() each walk every module: nothing to switch where none is training (a scan's model).
        switch = any(module.training for module in self.model.modules())
        if switch:
            self.model.eval()
        try:
            with torch.inference_mode():
                batches = range(0, len(self.x), self.batch_size)
                return torch.cat([self.model(self.x[i : i + self.batch_size]) for i in batches])
        finally:
            if switch:
                self.model.train(was_training)

    def __call__(self) -> Metrics:
        return self.evaluate()

    def outcomes(self) -> np.ndarray:
        """Per example of the last evaluation, what its score is made of: right or wrong (bool, (N,)), or for a
        language model minus each sequence's mean token loss (float64, (N,)); for :func:`paired_gain_interval`."""
        if self.token_level:
            assert self.sequence_loss is not None, "evaluate first"
            return -self.sequence_loss.cpu().numpy()
        assert self.correct is not None, "evaluate first"
        return self.correct.cpu().numpy()

    def evaluate(self) -> Metrics:
        """Metrics of the model now; :attr:`correct` keeps which examples it got right
        (:attr:`sequence_loss` each sequence's mean token loss, for a language model)."""
        if self.token_level:
            return self._evaluate_tokens()
        logits = self.logits()
        predictions = self._judge(logits)
        n = len(self.y)
        num_classes = max(self.num_classes, logits.shape[1])
        successes = int(self.correct.sum())
        return Metrics(
            accuracy=successes / n if n else 0.0,
            macro_f1=macro_f1(predictions, self.y, num_classes) if n else 0.0,
            loss=float(F.cross_entropy(logits.float(), self.y)) if n else 0.0,
            n=n,
            accuracy_ci=self._interval(successes),
            extra={name: float(metric(logits, self.y)) for name, metric in self.metrics.items()},
        )

    def accuracy(self) -> tuple[float, tuple[float, float]]:
        """The accuracy of the model now and its interval, as :meth:`evaluate` gives them, nothing else
        computed (on a small model the loss and macro-F1 cost a sizeable share of a forward pass);
        :attr:`correct` keeps which examples it got right. Labels per example, not per token."""
        if self.token_level:
            raise UsageError("accuracy() scores labels per example; a language model's tokens: use evaluate()")
        self._judge(self.logits())
        successes, n = int(self.correct.sum()), len(self.y)
        return (successes / n if n else 0.0), self._interval(successes)

    def _judge(self, logits: torch.Tensor) -> torch.Tensor:
        """The predictions of ``logits``; keeps which were right in :attr:`correct`."""
        predictions = logits.argmax(dim=1)
        self.correct = predictions == self.y
        return predictions

    def _interval(self, successes: int) -> tuple[float, float]:
        """The accuracy's confidence interval, from the last evaluation's :attr:`correct`."""
        if self.interval == "wilson":
            return wilson_interval(successes, len(self.y), self.confidence)
        return bootstrap_interval(self.correct.cpu().numpy().astype(float), self.confidence, seed=self.seed)

    def _evaluate_tokens(self) -> Metrics:
        """Token-level metrics of a language model, reduced batch by batch (logits never held for the split)."""
        was_training = self.model.training
        self.model.eval()
        losses, right = [], 0
        try:
            with torch.inference_mode():
                row = int(self.y[0].numel()) * max(1, self.num_classes) if len(self.y) else 1
                start, batch = 0, max(1, min(self.batch_size, _LOGITS_BUDGET // row))
                while start < len(self.x):
                    logits = self.model(self.x[start : start + batch])
                    labels = self.y[start : start + batch]
                    token_loss = prediction_loss(logits.float(), labels, reduction="none").view(labels.shape)
                    losses.append(token_loss.double().mean(dim=1))
                    right += int((logits.argmax(dim=-1) == labels).sum())
                    start += len(labels)
                    batch = max(1, min(self.batch_size, _LOGITS_BUDGET // max(1, logits[0].numel())))
        finally:
            self.model.train(was_training)
        n, tokens = len(self.y), self.y.numel()
        self.sequence_loss = torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)
        self.correct = None
        # Every sequence has T tokens, so the mean of the sequences' means is the mean over all tokens.
        loss = float(self.sequence_loss.mean()) if n else 0.0
        return Metrics(
            accuracy=right / tokens if tokens else 0.0,
            macro_f1=None,
            loss=loss,
            n=n,
            accuracy_ci=wilson_interval(right, tokens, self.confidence),
            extra={"perplexity": math.exp(loss) if math.isfinite(loss) and loss < 700 else math.inf,
                   "tokens": float(tokens)},
        )
