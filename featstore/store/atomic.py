"""Replacing a whole folder so that readers see the old one or the new one, never a mixture."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_folder(new: Path, final: Path) -> None:
    """Move `new` to `final`, replacing an older `final` by two renames (it is missing only between them)."""
    retired = final.with_name(f".{final.name}.retired")
    shutil.rmtree(retired, ignore_errors=True)
    if final.exists():
        os.replace(final, retired)
    os.replace(new, final)
    shutil.rmtree(retired, ignore_errors=True)
