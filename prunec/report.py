"""The report of a compile: costs before and after, and one entry per pass."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Report"]


@dataclass
class Report:
    """What a compile did: costs before and after, and one entry per pass."""

    macs_before: int
    params_before: int
    macs_after: int = 0
    params_after: int = 0
    passes: list = field(default_factory=list)
    backend: str = "torch"

    @property
    def macs_ratio(self) -> float:
        """``macs_before / macs_after``: the ideal speedup."""
        return self.macs_before / max(self.macs_after, 1)

    def to_dict(self) -> dict:
        return {"macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "backend": self.backend,
                "passes": [{k: v for k, v in p.items() if k != "plan"} for p in self.passes]}

    def __str__(self) -> str:
        lines = [f"MACs   {self.macs_before / 1e6:12.2f}M -> {self.macs_after / 1e6:12.2f}M "
                 f"({100 * (1 - self.macs_after / max(self.macs_before, 1)):.1f}% fewer, "
                 f"ideal speedup {self.macs_ratio:.2f}x)",
                 f"params {self.params_before / 1e6:12.3f}M -> {self.params_after / 1e6:12.3f}M "
                 f"({100 * (1 - self.params_after / max(self.params_before, 1)):.1f}% fewer)"]
        for p in self.passes:
            extra = ", ".join(f"{k}={v}" for k, v in p.items()
                              if k not in ("pass", "plan") and not isinstance(v, (dict, list)))
            lines.append(f"  {p['pass']}: {extra}")
        return "\n".join(lines)
