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
          "→": r"$\to$", "≈": r"$\approx$", "⇒": r"$\Rightarrow$", "…": r"\ldots{}",
          "−": "-", "<": r"\textless{}", ">": r"\textgreater{}", "·": r"$\cdot$",
          "∞": r"$\infty$", "≠": r"$\neq$", "∈": r"$\in$", "°": r"$^\circ$",
          "✓": "yes", "✗": "no", "’": "'", "‘": "`", "“": "``", "”": "''", "\u00a0": "~"}
# Plain-text stand-ins, for TeX comments and any symbol the map above lacks.
_ASCII = {"±": "+-", "‖": "||", "≈": "~", "⇒": "=>", "→": "->", "…": "...", "×": "x",
          "≥": ">=", "≤": "<=", "—": "--", "–": "-", "−": "-", "·": "*", "∞": "inf",
          "≠": "!=", "✓": "yes", "✗": "no"}


def latex_escape(text: Any) -> str:
    """`text` as LaTeX source that prints it, in ASCII only (pdflatex, any input encoding):
    special characters escaped, symbols and Greek letters as math, accents through TeX."""
    out = []
    for ch in str(text):
        if ch in _LATEX:
            out.append(_LATEX[ch])
        elif ch.isascii():
            out.append(ch)
        else:
            out.append(_unicode_to_tex(ch))
    return "".join(out)


def _unicode_to_tex(ch: str) -> str:
    """A non-ASCII character the map lacks: a Greek letter as math, a sub/superscript digit as
    math, an accented letter as TeX accent + letter, else its plain stand-in or '?'."""
    import unicodedata

    name = unicodedata.name(ch, "")
    if name.startswith("GREEK "):
        word = name.split()[-1].lower().replace("lamda", "lambda")
        greek = word.capitalize() if "CAPITAL" in name else word
        return f"$\\{greek}$" if word.isalpha() else "?"
    if "SUBSCRIPT" in name or "SUPERSCRIPT" in name:
        base = unicodedata.normalize("NFKD", ch)
        return f"$_{{{base}}}$" if "SUBSCRIPT" in name else f"$^{{{base}}}$"
    base = unicodedata.normalize("NFKD", ch)
    accents = {"\u0301": "'", "\u0300": "`", "\u0308": '"', "\u0302": "^", "\u0303": "~"}
    if len(base) == 2 and base[0].isascii() and base[1] in accents:
        return f"{{\\{accents[base[1]]}{base[0]}}}"
    return latex_ascii(ch) if ch in _ASCII else "?"


def latex_ascii(text: Any) -> str:
    """`text` in ASCII for a TeX comment: symbols as plain stand-ins (± -> +-), Greek letters
    by name, what is left as '?'."""
    import unicodedata

    out = []
    for ch in str(text):
        if ch.isascii():
            out.append(ch)
        elif ch in _ASCII:
            out.append(_ASCII[ch])
        elif unicodedata.name(ch, "").startswith("GREEK "):
            out.append(unicodedata.name(ch).split()[-1].capitalize().replace("Lamda", "Lambda"))
        else:
            base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(base or "?")
    return "".join(out)


def fmt(value: Any, spec: str = ".4g") -> str:
    """A cell for printing: None -> '—', floats with `spec` ('nan' for NaN), the rest as str."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, spec)
    return str(value)
