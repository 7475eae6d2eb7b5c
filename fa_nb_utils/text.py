"""Plain-text helpers shared by reports and tables: LaTeX escaping and number cells.

Not here: writing files (io.py, paper/figures.py).
"""
from __future__ import annotations

import math
from typing import Any

# Characters LaTeX treats specially, and the Unicode symbols the tables use, as LaTeX.
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
          "±": r"$\pm$", "Γ": r"$\Gamma$", "λ": r"$\lambda$", "—": "---", "–": "--",
          "‖": r"$\|$", "|": r"$|$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$",
          "→": r"$\to$"}


def latex_escape(text: Any) -> str:
    """`text` as LaTeX source that prints it (special characters escaped, symbols as math)."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def fmt(value: Any, spec: str = ".4g") -> str:
    """A cell for printing: None -> '—', floats with `spec` ('nan' for NaN), the rest as str."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, spec)
    return str(value)
