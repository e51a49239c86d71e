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
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from probes.base import BinaryProbe, as_numpy
from probes.errors import ProbeInputError
from probes.row_network import RowWeighting, batch_tensors
from probes.rows import AttentionRows
from probes.saved_checks import MAX_INT, SavedProbeError, array, boolean, fields, integer, real, seed, text


class AttentionRowProbe(BinaryProbe):
    """Learned attention-row probe (see the module docstring). X is an `AttentionRows` (fit and decision_function
    also take a 4-D array with `lengths=` and optional `tokens=`)."""

    def __init__(
        self,
        readers_per_head: int = 2,
        n_position_basis: int = 24,
        n_distance_basis: int = 8,
        content_dim: int = 4,
        use_tokens: bool = True,
        learning_rate: float = 0.01,
        weight_decay: float = 0.01,
        batch_size: int = 64,
        max_epochs: int = 60,
        patience: int = 10,
        cv_folds: int = 3,
        random_state: int = 0,
        cache_bytes: int = 2**31,
        accelerator: str = "auto",
        devices: str | int = 1,
        log_dir: str | None = None,
    ):
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
            raise ProbeInputError(
                f"AttentionRowProbe.fit: needs {len(rows)} labels of exactly two classes, "
                f"got {len(y)} labels of classes {self.classes_.tolist()}"
            )
        target = (y == self.classes_[1]).astype(np.float32)
        rarer = int(min(target.sum(), len(target) - target.sum()))
        if self.cv_folds < 2 or rarer < self.cv_folds:
            raise ProbeInputError(
                f"AttentionRowProbe: {self.cv_folds}-fold validation needs cv_folds >= 2 and "
                f"at least that many rows of each class; the rarer class has {rarer}"
            )
        self.n_layers_, self.n_heads_ = rows.n_layers, rows.n_heads
        self.n_features_in_ = rows.n_channels
        self.vocab_size_ = rows.max_token() + 1 if self.use_tokens and rows.tokens is not None else 0
        folds = StratifiedKFold(self.cv_folds, shuffle=True, random_state=self.random_state)
        histories = [
            self._train_fold(rows, target, fit_rows, val_rows, fold)
            for fold, (fit_rows, val_rows) in enumerate(folds.split(np.zeros(len(target)), target))
        ]
        common = min(len(history) for history in histories)  # the epochs every fold ran
        mean_auc = np.mean([[auc for auc, _ in history[:common]] for history in histories], axis=0)
        epoch = int(np.argmax(mean_auc))
        self.state_ = {
            f"{fold}.{key}": value for fold, history in enumerate(histories) for key, value in history[epoch][1].items()
        }
        self.n_members_ = len(histories)
        self.best_epoch_, self.validation_auc_, self.epochs_run_ = epoch, float(mean_auc[epoch]), common
        return self

    def _train_fold(
        self, rows: AttentionRows, target: np.ndarray, fit_rows: np.ndarray, val_rows: np.ndarray, fold: int
    ) -> list[tuple[float, dict]]:
        """Train a network on `fit_rows` (seeded by the probe's seed and the fold), returning each epoch's ROC AUC on
        `val_rows` with the network's state after that epoch."""
        import lightning as L
        from lightning.pytorch.callbacks import EarlyStopping
        from lightning.pytorch.loggers import CSVLogger

        from probes.row_training import BatchData, LightningRowProbe, fit_interruptibly

        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # after the import, which sets it to INFO
        seed = int(np.random.SeedSequence([self.random_state, fold]).generate_state(1)[0])
        L.seed_everything(seed, workers=True, verbose=False)
        module = LightningRowProbe(self._network(), self.learning_rate, self.weight_decay)
        data = BatchData(rows, target, fit_rows, val_rows, self.batch_size, seed, self.cache_bytes)
        trainer = L.Trainer(
            accelerator=self.accelerator,
            devices=self.devices,
            max_epochs=self.max_epochs,
            deterministic=True,
            callbacks=[EarlyStopping(monitor="val_auc", mode="max", patience=self.patience)],
            logger=CSVLogger(self.log_dir, name="", version=f"fold-{fold}") if self.log_dir else False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers).*")
            fit_interruptibly(trainer, module, data)
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
                inputs = batch_tensors(rows, batch, self.vocab_size_)
                out[batch] = torch.stack([network(*inputs) for network in networks]).double().mean(0).numpy()
        return out

    def head_importance(self) -> np.ndarray:
        """(layers, heads): the L2 norm of each head's read-out weights (on batch-normalised features), averaged over
        the fold networks."""
        check_is_fitted(self, "state_")
        norms = [
            self._member_state(m)["readout.weight"].reshape(self.n_features_in_, self.readers_per_head).norm(dim=1)
            for m in range(self.n_members_)
        ]
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
            scale = torch.sqrt(state["norm.running_var"] + network.norm.eps).reshape(
                self.n_features_in_, self.readers_per_head
            )
            per_reader = torch.einsum("pk,cmk->cmp", basis, state["basis_weights"])
            curves.append(torch.einsum("cmp,cm->cp", per_reader, readout / scale))
        curve = torch.stack(curves).mean(0)
        return curve.reshape(self.n_layers_, self.n_heads_, n_points).detach().numpy().astype(np.float64)

    def standardised_weights(self, X) -> np.ndarray:
        """Each head's importance (head_importance, flattened layer by layer): the read-out already acts on
        batch-normalised features, so X is not needed."""
        return self.head_importance().ravel()

    def chosen_hyperparameters(self) -> dict[str, float | int]:
        """The chosen epoch and its mean held-out ROC AUC over the folds, for a runner to record."""
        check_is_fitted(self, "state_")
        return {
            "best_epoch": self.best_epoch_,
            "validation_auc": self.validation_auc_,
            "epochs_run": self.epochs_run_,
            "cv_folds": self.n_members_,
        }

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
        return RowWeighting(
            self.n_features_in_,
            self.readers_per_head,
            self.n_position_basis,
            self.n_distance_basis,
            self.vocab_size_,
            self.content_dim,
        )

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
        plain = {
            **self._common_state(),
            "n_layers_": self.n_layers_,
            "n_heads_": self.n_heads_,
            "vocab_size_": self.vocab_size_,
            "best_epoch_": self.best_epoch_,
            "validation_auc_": self.validation_auc_,
            "epochs_run_": self.epochs_run_,
            "n_members_": self.n_members_,
        }
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
        self.state_ = {
            key: torch.from_numpy(
                array(arrays, f"state_.{key}", tuple(value.shape), (str(value.dtype).removeprefix("torch."),))
            )
            for key, value in expected.items()
        }


def _rows(X, lengths, tokens) -> AttentionRows:
    if isinstance(X, AttentionRows):
        return X
    if lengths is None:
        raise ProbeInputError("AttentionRowProbe needs lengths= with a 4-D array (or pass an AttentionRows)")
    return AttentionRows(X, lengths, tokens)
