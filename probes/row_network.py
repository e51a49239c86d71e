"""The attention-row probe's network: per head, learned weightings of the row's tokens (position, distance from the
last token, first token, token content) and a linear read-out of the weighted sums (see probes.attention_row)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from probes.errors import ProbeInputError
from probes.rows import AttentionRows

MAX_DISTANCE = 4096


class RowWeighting(nn.Module):
    """The learned per-head weightings and the linear read-out (see the module docstring)."""

    def __init__(
        self, n_channels: int, readers: int, n_position: int, n_distance: int, vocab_size: int, content_dim: int
    ):
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


def batch_tensors(rows: AttentionRows, batch: np.ndarray, vocab_size: int):
    """A batch as tensors; token ids not seen in training map to the unknown index `vocab_size`."""
    attn, lengths, tokens = rows.batch(batch)
    if vocab_size and tokens is None:
        raise ProbeInputError("AttentionRowProbe was fitted with token ids; pass them (tokens=) to score too")
    tokens_tensor = torch.from_numpy(np.where(tokens < vocab_size, tokens, vocab_size)) if vocab_size else None
    return torch.from_numpy(attn), torch.from_numpy(lengths), tokens_tensor
