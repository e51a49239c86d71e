"""A model's tokenizer saved beside its features, so stored token ids decode without loading the model."""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from featstore.errors import FeatstoreError
from featstore.store.atomic import swap_folder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Write the tokenizer's files to `folder`, replacing an older copy by rename (never half-written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tokenizer.save_pretrained(staging)
        swap_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class TokenDecoder:
    """Readable text of single token ids (`' the'`, `'<|endoftext|>'`), from a saved tokenizer folder."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        try:  # a store's folder may name custom tokenizer code (auto_map): never run it, never ask whether to
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        except (ValueError, OSError) as error:
            reason = "it names custom code, never run" if "custom code" in str(error) else str(error).splitlines()[0]
            raise FeatstoreError(
                f"the saved tokenizer {folder} cannot be loaded ({reason[:200]}); "
                "`featstore build --overwrite` of the model saves it again"
            ) from None
        self.text = lru_cache(maxsize=None)(self._text)

    def _text(self, token_id: int) -> str:
        return self.tokenizer.convert_tokens_to_string([self.tokenizer.convert_ids_to_tokens(int(token_id))])

    def decode(self, token_ids) -> list[str]:
        """One string per id, each token decoded on its own (a split multi-byte character shows as U+FFFD)."""
        return [self.text(int(token_id)) for token_id in token_ids]
