"""A zoo of small, seeded models for tests: ``ZOO[name]()`` returns a :class:`ZooCase`.

Every factory seeds ``torch`` before building, returns its model in eval mode with random
weights, and picks sizes so that one forward takes a few milliseconds on CPU. Channel, hidden,
intermediate and head sizes are multiples of 8 (or of 8 heads' worth) so that pruning with
``round_to=8`` has room to act.

Vision models live in :mod:`tests.zoo.vision`; Hugging Face ``transformers`` models built from
small configs (no downloads) live in :mod:`tests.zoo.transformers_zoo` and import
``transformers`` only when a factory runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["ZooCase", "ZOO", "VISION", "TRANSFORMERS", "get_case"]


@dataclass
class ZooCase:
    """A model with example inputs, ready for ``capture(model, args, kwargs)``.

    Attributes:
        name: Registry name.
        model: The module, in eval mode.
        args: Positional example inputs.
        kwargs: Keyword example inputs (e.g. ``attention_mask``).
        capture_options: Extra keyword arguments for ``capture`` (``dynamic=False`` for
            models whose window partitioning needs static image sizes).
    """

    name: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)
    capture_options: dict = field(default_factory=dict)

    def __call__(self):
        """Run the model on the example inputs."""
        return self.model(*self.args, **self.kwargs)


# Imported after ZooCase exists: the submodules build ZooCase objects.
from tests.zoo.transformers_zoo import TRANSFORMERS  # noqa: E402
from tests.zoo.vision import VISION  # noqa: E402

ZOO: dict[str, Callable[[], ZooCase]] = {**VISION, **TRANSFORMERS}


def get_case(name: str) -> ZooCase:
    """Build the zoo case called ``name``."""
    return ZOO[name]()
