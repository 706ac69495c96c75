"""Types a checkpoint's hyperparameters may hold, allowed under ``torch.load(weights_only=True)``.

Each type registers itself where it is defined, so a process that can build the type can also read it back.
"""

from __future__ import annotations

import torch


def allow_in_checkpoints(*classes: type, old_module: str | None = None) -> None:
    """Allow ``classes`` when checkpoints are read as data (``torch.serialization.add_safe_globals``).

    ``old_module``: also under ``<old_module>.<name>``, the name checkpoints written before a class moved pickled
    it under, so those still load (torch matches the pickled name, it does not import the old module).
    """
    aliases = [(c, f"{old_module}.{c.__name__}") for c in classes] if old_module else []
    torch.serialization.add_safe_globals([*classes, *aliases])
