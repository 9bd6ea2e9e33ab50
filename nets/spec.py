"""`SubnetSpec`: the name of one sub-network of a doubly nested network.

A doubly nested network (Kim et al., "Doubly Nested Network for
Resource-Efficient Inference", 2018) is sliced along depth (how many of its
output depths run: the stem is depth 1, each residual block one more) and along
width (how many channel groups of every layer run, from the first).  The pair
names a sub-network everywhere in the project, and its canonical string form
(``d12w6``) is the catalog's key in files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nets.errors import SpecError

_SPEC_RE = re.compile(r"d([1-9][0-9]*)w([1-9][0-9]*)")


@dataclass(frozen=True, order=True)
class SubnetSpec:
    """A (depth, width) sub-network; both counts are 1-based.

    ``depth`` counts output depths from the input (1 = the stem alone), and
    ``width`` counts channel groups from the first (1 = the narrowest slice).
    """

    depth: int
    width: int

    def __post_init__(self) -> None:
        for field_name in ("depth", "width"):
            value = getattr(self, field_name)
            # bool is an int subclass; d True w 1 is a bug, not a sub-network
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"SubnetSpec.{field_name} must be an integer >= 1, got {value!r}")

    def __str__(self) -> str:
        return f"d{self.depth}w{self.width}"

    @classmethod
    def parse(cls, text: str) -> "SubnetSpec":
        """Parse the canonical form ``d<depth>w<width>``, e.g. ``d12w6``."""
        match = _SPEC_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise SpecError(f"not a sub-network name: {text!r} (expected e.g. 'd12w6')")
        return cls(int(match.group(1)), int(match.group(2)))

    def check_within(self, depths: int, widths: int) -> None:
        """Raise :class:`SpecError` unless this spec fits a net of that size."""
        if self.depth > depths or self.width > widths:
            raise SpecError(
                f"sub-network {self} does not exist in a net with {depths} depths and {widths} widths"
            )


def all_specs(depths: int, widths: int) -> list[SubnetSpec]:
    """Every sub-network of a depths x widths net, depth-major order."""
    return [SubnetSpec(d, w) for d in range(1, depths + 1) for w in range(1, widths + 1)]
