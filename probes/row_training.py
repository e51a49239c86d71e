"""Training an attention-row network with PyTorch Lightning: the LightningModule (BCE loss; each epoch's validation
ROC AUC kept with the network's state), the length-ordered batches, and Ctrl-C. probes.attention_row imports this
module only to fit, so scoring and loading a probe need no lightning."""

from __future__ import annotations

import signal
import threading

import lightning as L
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from probes.row_network import RowWeighting, batch_tensors
from probes.rows import AttentionRows


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
        self.history.append(
            (float(auc), {key: value.detach().cpu().clone() for key, value in self.network.state_dict().items()})
        )

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)


class RowBatches(torch.utils.data.Dataset):
    """The batches (arrays of rows) of a BatchData as a dataset: item i is batch i's tensors."""

    def __init__(self, data: BatchData, batches: list[np.ndarray], vocab_size: int):
        self.data, self.batches, self.vocab_size = data, batches, vocab_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple:
        return self.data.batch(self.batches[i], self.vocab_size)


class BatchData(L.LightningDataModule):
    """Length-ordered batches of the training and validation rows (batch order shuffled, seeded)."""

    def __init__(
        self, rows: AttentionRows, target: np.ndarray, fit_rows, val_rows, batch_size: int, seed: int, cache_bytes: int
    ):
        super().__init__()
        self.rows, self.target, self.seed = rows, target, seed
        self.fit_batches = list(rows.batches(fit_rows, batch_size))
        self.val_batches = list(rows.batches(val_rows, batch_size))
        self.cache: dict[tuple, tuple] = {}
        self.cache_left = cache_bytes

    def _loader(self, batches: list[np.ndarray], shuffle: bool) -> torch.utils.data.DataLoader:
        vocab = self.trainer.lightning_module.network.embedding
        vocab_size = vocab.padding_idx if vocab is not None else 0
        generator = torch.Generator().manual_seed(self.seed)
        return torch.utils.data.DataLoader(
            RowBatches(self, batches, vocab_size),
            batch_size=None,
            shuffle=shuffle,
            generator=generator,
            collate_fn=lambda item: item,
        )

    def batch(self, rows: np.ndarray, vocab_size: int) -> tuple:
        """A batch's tensors: read from the rows, kept in memory while the cache budget lasts (float16
        attention), so later epochs need not read a lazy store again."""
        key = tuple(rows.tolist())
        if key in self.cache:
            attn, lengths, tokens, target = self.cache[key]
            return attn.float(), lengths, tokens, target
        attn, lengths, tokens = batch_tensors(self.rows, rows, vocab_size)
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


def fit_interruptibly(trainer: L.Trainer, module: LightningRowProbe, data: BatchData) -> None:
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
