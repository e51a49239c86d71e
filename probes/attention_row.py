"""A probe that learns where, and on which tokens, each head's attention row is informative.

Per head and per reader m (a few per head), a weighting of the row's tokens
    w(t) = sum_b a_b phi_b(relative position) + sum_c b_c psi_c(log(1 + distance from the last token))
           + e * [t == 0] + u . E[token at t]
gives the feature sum_t attn(t) w(t) over valid tokens; features are standardised (batch norm) and read
out linearly. phi are Gaussian bumps over (0, 1), psi over log distance, E a learned token embedding.
The fixed aggregations first, bins, last:K and span means are special cases (indicator-like weightings);
unlike them, the weighting can sit on any window or on particular attended tokens.
Trained with PyTorch Lightning: AdamW with weight decay, one network per fold of a seeded, stratified k-fold
split of the training rows (k = `cv_folds`), each trained on the other folds and validated on its own; each stops
`patience` epochs after its own best. The epoch is the one whose ROC AUC, averaged over the k held-out folds,
is best (every training row is validated once, so the choice is not one 100-row holdout's noise), and the
probe's decision is the mean of the k networks' logits at that epoch (a cross-validation bag: averaging
members trained from different seeds on different rows steadies the prediction). Batches are read
from the input in length order and kept in memory (float16) up to `cache_bytes`; past that budget they are
read again each epoch, so memory stays bounded by the budget plus a batch.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import warnings

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted
from torch import nn

from probes.base import BinaryProbe, as_numpy
from probes.errors import ProbeInputError
from probes.metrics import binary_scores
from probes.rows import AttentionRows
from probes.saved_checks import MAX_INT, SavedProbeError, array, boolean, fields, integer, real, seed, text

MAX_DISTANCE = 4096


class RowWeighting(nn.Module):
    """The learned per-head weightings and the linear read-out (see the module docstring)."""

    def __init__(self, n_channels: int, readers: int, n_position: int, n_distance: int, vocab_size: int,
                 content_dim: int):
        super().__init__()
        self.n_position, self.n_distance = n_position, n_distance
        n_basis = n_position + n_distance + 1
        self.basis_weights = nn.Parameter(torch.zeros(n_channels, readers, n_basis))
        nn.init.normal_(self.basis_weights, std=0.1)
        # index vocab_size is every id unseen in training: a zero embedding that never trains
        self.embedding = nn.Embedding(vocab_size + 1, content_dim, padding_idx=vocab_size) if vocab_size else None
        self.content_weights = nn.Parameter(torch.randn(n_channels, readers, content_dim) * 0.1) if vocab_size else None
        self.norm = nn.BatchNorm1d(n_channels * readers, affine=False)
        self.readout = nn.Linear(n_channels * readers, 1)

    def basis(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """(batch, width, n_basis): position bumps, log-distance bumps, first-token indicator."""
        t = torch.arange(width, dtype=torch.float32, device=lengths.device)
        length = lengths.to(torch.float32)[:, None]
        relative = (t + 0.5) / length
        centres = torch.linspace(0, 1, self.n_position, device=lengths.device)
        position = torch.exp(-0.5 * ((relative[..., None] - centres) * (self.n_position - 1)) ** 2)
        distance = torch.log1p((length - 1 - t).clamp(min=0))
        log_centres = torch.linspace(0, math.log1p(MAX_DISTANCE), self.n_distance, device=lengths.device)
        spacing = math.log1p(MAX_DISTANCE) / max(self.n_distance - 1, 1)
        near = torch.exp(-0.5 * ((distance[..., None] - log_centres) / spacing) ** 2)
        first = (t == 0).to(torch.float32).expand(len(lengths), width)[..., None]
        return torch.cat([position, near, first], dim=-1)

    def features(self, attn: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """(batch, channels * readers) weighted sums of the rows (padding is zero in `attn`)."""
        pooled = torch.einsum("bct,btk->bck", attn, self.basis(lengths, attn.shape[-1]))
        features = torch.einsum("bck,cmk->bcm", pooled, self.basis_weights)
        if self.embedding is not None and tokens is not None:
            content = torch.einsum("bct,btd->bcd", attn, self.embedding(tokens))
            features = features + torch.einsum("bcd,cmd->bcm", content, self.content_weights)
        return features.flatten(1)

    def forward(self, attn: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        return self.readout(self.norm(self.features(attn, lengths, tokens))).squeeze(-1)


class AttentionRowProbe(BinaryProbe):
    """Learned attention-row probe (see the module docstring). X is an `AttentionRows` (or a 4-D array with
    `lengths=` and optional `tokens=` passed to fit/decision_function)."""

    def __init__(self, readers_per_head: int = 2, n_position_basis: int = 24, n_distance_basis: int = 8,
                 content_dim: int = 4, use_tokens: bool = True, learning_rate: float = 0.01,
                 weight_decay: float = 0.01, batch_size: int = 64, max_epochs: int = 60, patience: int = 10,
                 cv_folds: int = 3, random_state: int = 0,
                 cache_bytes: int = 2**31, accelerator: str = "auto", devices: str | int = 1,
                 log_dir: str | None = None):
        self.readers_per_head = readers_per_head
        self.n_position_basis = n_position_basis
        self.n_distance_basis = n_distance_basis
        self.content_dim = content_dim
        self.use_tokens = use_tokens
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.cv_folds = cv_folds
        self.random_state = random_state
        self.cache_bytes = cache_bytes
        self.accelerator = accelerator
        self.devices = devices
        self.log_dir = log_dir

    def fit(self, X, y, lengths=None, tokens=None) -> AttentionRowProbe:
        """Train one network per fold of (X, y) and keep, for all, the epoch with the best mean held-out ROC AUC."""
        rows = _rows(X, lengths, tokens)
        y = np.asarray(as_numpy(y)).ravel()
        self.classes_ = np.unique(y)
        if self.classes_.size != 2 or len(y) != len(rows):
            raise ProbeInputError(f"AttentionRowProbe.fit: needs {len(rows)} labels of exactly two classes, "
                                  f"got {len(y)} labels of classes {self.classes_.tolist()}")
        target = (y == self.classes_[1]).astype(np.float32)
        rarer = int(min(target.sum(), len(target) - target.sum()))
        if self.cv_folds < 2 or rarer < self.cv_folds:
            raise ProbeInputError(f"AttentionRowProbe: {self.cv_folds}-fold validation needs cv_folds >= 2 and at least "
                                  f"that many rows of each class; the rarer class has {rarer}")
        self.n_layers_, self.n_heads_ = rows.n_layers, rows.n_heads
        self.n_features_in_ = rows.n_channels
        self.vocab_size_ = rows.max_token() + 1 if self.use_tokens and rows.tokens is not None else 0
        folds = StratifiedKFold(self.cv_folds, shuffle=True, random_state=self.random_state)
        histories = [self._train_fold(rows, target, fit_rows, val_rows, fold)
                     for fold, (fit_rows, val_rows) in enumerate(folds.split(np.zeros(len(target)), target))]
        common = min(len(history) for history in histories)  # the epochs every fold ran
        mean_auc = np.mean([[auc for auc, _ in history[:common]] for history in histories], axis=0)
        epoch = int(np.argmax(mean_auc))
        self.state_ = {f"{fold}.{key}": value for fold, history in enumerate(histories)
                       for key, value in history[epoch][1].items()}
        self.n_members_ = len(histories)
        self.best_epoch_, self.validation_auc_, self.epochs_run_ = epoch, float(mean_auc[epoch]), common
        return self

    def _train_fold(self, rows: AttentionRows, target: np.ndarray, fit_rows: np.ndarray, val_rows: np.ndarray,
                    fold: int) -> list[tuple[float, dict]]:
        """Train a network on `fit_rows` (seeded by the probe's seed and the fold), returning each epoch's ROC AUC on
        `val_rows` with the network's state after that epoch."""
        import lightning as L
        from lightning.pytorch.callbacks import EarlyStopping
        from lightning.pytorch.loggers import CSVLogger

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # after the import, which sets it to INFO
        seed = int(np.random.SeedSequence([self.random_state, fold]).generate_state(1)[0])
        LightningRowProbe, BatchData = _lightning_classes()
        L.seed_everything(seed, workers=True, verbose=False)
        module = LightningRowProbe(self._network(), self.learning_rate, self.weight_decay)
        data = BatchData(rows, target, fit_rows, val_rows, self.batch_size, seed, self.cache_bytes)
        trainer = L.Trainer(
            accelerator=self.accelerator, devices=self.devices, max_epochs=self.max_epochs, deterministic=True,
            callbacks=[EarlyStopping(monitor="val_auc", mode="max", patience=self.patience)],
            logger=CSVLogger(self.log_dir, name="", version=f"fold-{fold}") if self.log_dir else False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            num_sanity_val_steps=0, log_every_n_steps=1,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers).*")
            _train(trainer, module, data)
        return module.history

    def decision_function(self, X, lengths=None, tokens=None) -> np.ndarray:
        """Logit of the positive class, shape (n,), computed batch by batch in length order."""
        check_is_fitted(self, "state_")
        rows = _rows(X, lengths, tokens)
        if rows.n_channels != self.n_features_in_:
            raise ProbeInputError(f"AttentionRowProbe: fitted on {self.n_features_in_} heads, got {rows.n_channels}")
        networks = self._members()
        out = np.empty(len(rows))
        with torch.inference_mode():
            for batch in rows.batches(np.arange(len(rows)), self.batch_size):
                inputs = _tensors(rows, batch, self.vocab_size_)
                out[batch] = torch.stack([network(*inputs) for network in networks]).double().mean(0).numpy()
        return out

    def score(self, X, y, lengths=None, tokens=None) -> dict[str, float]:
        """Metrics on (X, y): roc_auc with its interval, accuracy, balanced_accuracy, f1, n."""
        decision = self.decision_function(X, lengths, tokens)
        y = np.asarray(as_numpy(y)).ravel()
        return binary_scores(y == self.classes_[1], decision, decision > 0)

    def predict_proba(self, X, lengths=None, tokens=None) -> np.ndarray:
        positive = 1 / (1 + np.exp(-self.decision_function(X, lengths, tokens)))
        return np.column_stack([1 - positive, positive])

    def predict(self, X, lengths=None, tokens=None) -> np.ndarray:
        return self.classes_[(self.decision_function(X, lengths, tokens) > 0).astype(np.int64)]

    def head_importance(self) -> np.ndarray:
        """(layers, heads): the L2 norm of each head's read-out weights (on batch-normalised features), averaged over
        the fold networks."""
        check_is_fitted(self, "state_")
        norms = [self._member_state(m)["readout.weight"].reshape(self.n_features_in_, self.readers_per_head).norm(dim=1)
                 for m in range(self.n_members_)]
        return torch.stack(norms).mean(0).reshape(self.n_layers_, self.n_heads_).numpy().astype(np.float64)

    def position_weights(self, n_points: int = 50, length: int = 1024) -> np.ndarray:
        """(layers, heads, n_points): each head's learned weighting (read-out folded in, content term left out)
        along the relative position of an example of `length` tokens."""
        check_is_fitted(self, "state_")
        network = self._network()
        positions = np.linspace(0, length - 1, n_points).round().astype(int)
        basis = network.basis(torch.tensor([length]), length)[0, positions]  # (points, n_basis)
        curves = []
        for member in range(self.n_members_):
            state = self._member_state(member)
            readout = state["readout.weight"].reshape(self.n_features_in_, self.readers_per_head)
            scale = torch.sqrt(state["norm.running_var"] + network.norm.eps).reshape(self.n_features_in_,
                                                                                 self.readers_per_head)
            per_reader = torch.einsum("pk,cmk->cmp", basis, state["basis_weights"])
            curves.append(torch.einsum("cmp,cm->cp", per_reader, readout / scale))
        curve = torch.stack(curves).mean(0)
        return curve.reshape(self.n_layers_, self.n_heads_, n_points).detach().numpy().astype(np.float64)

    def chosen_hyperparameters(self) -> dict[str, float | int]:
        """The chosen epoch and its mean held-out ROC AUC over the folds, for a runner to record."""
        check_is_fitted(self, "state_")
        return {"best_epoch": self.best_epoch_, "validation_auc": self.validation_auc_, "epochs_run": self.epochs_run_,
                "cv_folds": self.n_members_}

    def _member_state(self, member: int) -> dict[str, torch.Tensor]:
        """The state of fold network `member` (state_ holds every member's, keyed `<member>.<parameter>`)."""
        prefix = f"{member}."
        return {key.removeprefix(prefix): value for key, value in self.state_.items() if key.startswith(prefix)}

    def _members(self) -> list[RowWeighting]:
        """The fold networks, in evaluation mode."""
        networks = []
        for member in range(self.n_members_):
            network = self._network()
            network.load_state_dict(self._member_state(member))
            networks.append(network.eval())
        return networks

    def _network(self) -> RowWeighting:
        return RowWeighting(self.n_features_in_, self.readers_per_head, self.n_position_basis, self.n_distance_basis,
                            self.vocab_size_, self.content_dim)

    @classmethod
    def _check_params(cls, params: dict) -> None:
        for name, high in (("readers_per_head", 1024), ("n_position_basis", 4096), ("n_distance_basis", 4096)):
            integer(params[name], name, 1, high)
        integer(params["content_dim"], "content_dim", 0, 4096)
        boolean(params["use_tokens"], "use_tokens")
        real(params["learning_rate"], "learning_rate", 0)
        real(params["weight_decay"], "weight_decay", 0)
        integer(params["batch_size"], "batch_size", 1, 2**20)
        for name in ("max_epochs", "patience", "cache_bytes"):
            integer(params[name], name, 0, MAX_INT)
        integer(params["cv_folds"], "cv_folds", 2, 64)
        seed(params["random_state"])
        text(params["accelerator"], "accelerator")
        if isinstance(params["devices"], str):
            text(params["devices"], "devices")
        else:
            integer(params["devices"], "devices", -1, 2**16)
        text(params["log_dir"], "log_dir", optional=True)

    def _fitted_state(self) -> tuple[dict, dict[str, np.ndarray], dict]:
        plain = {**self._common_state(), "n_layers_": self.n_layers_, "n_heads_": self.n_heads_,
                 "vocab_size_": self.vocab_size_, "best_epoch_": self.best_epoch_,
                 "validation_auc_": self.validation_auc_, "epochs_run_": self.epochs_run_,
                 "n_members_": self.n_members_}
        return plain, {f"state_.{key}": value.detach().cpu().numpy() for key, value in self.state_.items()}, {}

    def _restore_fitted(self, plain: dict, arrays: dict[str, np.ndarray], parts: dict) -> None:
        own = {"n_layers_", "n_heads_", "vocab_size_", "best_epoch_", "validation_auc_", "epochs_run_", "n_members_"}
        plain = self._restore_common(plain, own, "attention-row")
        fields(parts, "attention-row parts", set())
        self.n_layers_ = integer(plain["n_layers_"], "n_layers_", 1, 2**16)
        self.n_heads_ = integer(plain["n_heads_"], "n_heads_", 1, 2**16)
        if self.n_layers_ * self.n_heads_ != self.n_features_in_:
            raise SavedProbeError(f"n_features_in_ {self.n_features_in_} is not n_layers_ x n_heads_")
        self.vocab_size_ = integer(plain["vocab_size_"], "vocab_size_", 0, 2**31)
        self.best_epoch_ = integer(plain["best_epoch_"], "best_epoch_", 0, MAX_INT)
        self.epochs_run_ = integer(plain["epochs_run_"], "epochs_run_", 0, MAX_INT)
        self.validation_auc_ = real(plain["validation_auc_"], "validation_auc_", finite=False)
        self.n_members_ = integer(plain["n_members_"], "n_members_", 1, 64)
        with torch.device("meta"):  # the shapes the parameters imply, without allocating them
            network = self._network().state_dict()
        expected = {f"{member}.{key}": value for member in range(self.n_members_) for key, value in network.items()}
        names = {name.removeprefix("state_.") for name in arrays if name.startswith("state_.")}
        if names != set(expected):
            raise SavedProbeError(f"the network state holds {sorted(names)[:8]}, expected {sorted(expected)}")
        self.state_ = {key: torch.from_numpy(array(arrays, f"state_.{key}", tuple(value.shape),
                                                    (str(value.dtype).removeprefix("torch."),)))
                       for key, value in expected.items()}


def _train(trainer, module, data) -> None:
    """trainer.fit, with Ctrl-C raised as KeyboardInterrupt like anywhere else: Lightning catches it, ignores
    further SIGINTs and exits 1 (SystemExit raised while handling the KeyboardInterrupt); undo both."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=data)
    except SystemExit as exit_:
        if not isinstance(exit_.__context__, KeyboardInterrupt):
            raise
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt from None


def _rows(X, lengths, tokens) -> AttentionRows:
    if isinstance(X, AttentionRows):
        return X
    if lengths is None:
        raise ProbeInputError("AttentionRowProbe needs lengths= with a 4-D array (or pass an AttentionRows)")
    return AttentionRows(X, lengths, tokens)


def _tensors(rows: AttentionRows, batch: np.ndarray, vocab_size: int):
    """A batch as tensors; token ids not seen in training map to the unknown index `vocab_size`."""
    attn, lengths, tokens = rows.batch(batch)
    if vocab_size and tokens is None:
        raise ProbeInputError("AttentionRowProbe was fitted with token ids; pass them (tokens=) to score too")
    tokens_tensor = torch.from_numpy(np.where(tokens < vocab_size, tokens, vocab_size)) if vocab_size else None
    return torch.from_numpy(attn), torch.from_numpy(lengths), tokens_tensor


def _lightning_classes():
    """The LightningModule and DataModule, defined on first use so importing probes needs no lightning."""
    import lightning as L

    class LightningRowProbe(L.LightningModule):
        """BCE training of a RowWeighting; the validation ROC AUC is logged as `val_auc` each epoch and kept in
        `history` with a copy of the network's state after that epoch."""

        def __init__(self, network: RowWeighting, learning_rate: float, weight_decay: float):
            super().__init__()
            self.network, self.learning_rate, self.weight_decay = network, learning_rate, weight_decay
            self._val_logits: list[torch.Tensor] = []
            self._val_targets: list[torch.Tensor] = []
            self.history: list[tuple[float, dict[str, torch.Tensor]]] = []

        def training_step(self, batch, _):
            attn, lengths, tokens, target = batch
            loss = nn.functional.binary_cross_entropy_with_logits(self.network(attn, lengths, tokens), target)
            self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(target))
            return loss

        def validation_step(self, batch, _):
            attn, lengths, tokens, target = batch
            self._val_logits.append(self.network(attn, lengths, tokens).detach().cpu())
            self._val_targets.append(target.cpu())

        def on_validation_epoch_end(self):
            # every process's validation rows (one process: the tensors themselves)
            logits = self.all_gather(torch.cat(self._val_logits)).flatten().cpu().numpy()
            targets = self.all_gather(torch.cat(self._val_targets)).flatten().cpu().numpy()
            self._val_logits.clear()
            self._val_targets.clear()
            auc = roc_auc_score(targets, logits) if 0 < targets.sum() < len(targets) else 0.5
            self.log("val_auc", float(auc), prog_bar=False)
            self.history.append((float(auc), {key: value.detach().cpu().clone()
                                              for key, value in self.network.state_dict().items()}))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

    class BatchData(L.LightningDataModule):
        """Length-ordered batches of the training and validation rows (batch order shuffled, seeded)."""

        def __init__(self, rows: AttentionRows, target: np.ndarray, fit_rows, val_rows, batch_size: int, seed: int,
                     cache_bytes: int):
            super().__init__()
            self.rows, self.target, self.seed = rows, target, seed
            self.fit_batches = list(rows.batches(fit_rows, batch_size))
            self.val_batches = list(rows.batches(val_rows, batch_size))
            self.cache: dict[tuple, tuple] = {}
            self.cache_left = cache_bytes

        def _loader(self, batches, shuffle: bool):
            vocab = self.trainer.lightning_module.network.embedding
            vocab_size = vocab.padding_idx if vocab is not None else 0
            data = self

            class Batches(torch.utils.data.Dataset):
                def __len__(self):
                    return len(batches)

                def __getitem__(self, i):
                    return data.batch(batches[i], vocab_size)

            generator = torch.Generator().manual_seed(self.seed)
            return torch.utils.data.DataLoader(Batches(), batch_size=None, shuffle=shuffle, generator=generator,
                                               collate_fn=lambda item: item)

        def batch(self, rows: np.ndarray, vocab_size: int) -> tuple:
            """A batch's tensors: read from the rows, kept in memory while the cache budget lasts (float16
            attention), so later epochs need not read a lazy store again."""
            key = tuple(rows.tolist())
            if key in self.cache:
                attn, lengths, tokens, target = self.cache[key]
                return attn.float(), lengths, tokens, target
            attn, lengths, tokens = _tensors(self.rows, rows, vocab_size)
            target = torch.from_numpy(self.target[rows])
            size = attn.numel() * 2 + (tokens.numel() * 8 if tokens is not None else 0)
            if size <= self.cache_left:
                self.cache_left -= size
                self.cache[key] = (attn.half(), lengths, tokens, target)
                attn = attn.half().float()  # the cached values, so every epoch sees the same numbers
            return attn, lengths, tokens, target

        def train_dataloader(self):
            return self._loader(self.fit_batches, shuffle=True)

        def val_dataloader(self):
            return self._loader(self.val_batches, shuffle=False)

    return LightningRowProbe, BatchData
