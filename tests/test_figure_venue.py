"""Figures sized for a venue: the PDF is the venue's text width (NeurIPS by default, ICML and
ICLR on request), carries its sidecar's provenance in its document info, has one legend outside
the data, and names each rule by its label."""
import re

import matplotlib.pyplot as plt
import pytest

from fa_nb_utils.paper import figures
from fa_nb_utils.paper.early_stop import plot_timeline

SERIES = {rule: {"seed": 1, "epoch": [0, 1, 2, 3], "max_block_growth": [1.0, 2.0, 9.0, 30.0],
                 "g_L": [1e-3, 1e-5, 1e-8, 1e-9], "acc_eval": [0.1, 0.3, 0.35, 0.36],
                 "first_fired": {"a": 3, "b": 2}}
          for rule in ("dfa", "credit_bridge", "state_bridge")}
META = {"fa_eval_version": "9.9", "git_commit": "abc123", "profile": "tiny", "data": "synthetic",
        "data_fingerprint": "f00d", "seeds": [1]}


@pytest.fixture(autouse=True)
def default_venue(monkeypatch):
    monkeypatch.delenv(figures.VENUE_ENV, raising=False)
    figures.set_venue(None)
    yield
    figures.set_venue(None)


def saved_pdf(tmp_path, name="03_timeline"):
    fig = plot_timeline(SERIES)
    try:
        with figures.paper_style():
            return fig, figures.save_figure(fig, name, numbers=SERIES, metadata=META,
                                            outdir=tmp_path)["pdf"].read_bytes()
    finally:
        plt.close(fig)


def pdf_string(pdf: bytes, key: str) -> str:
    """A literal string of the PDF's document info, unescaped."""
    start, out, escaped = pdf.index(f"/{key} (".encode()) + len(key) + 3, bytearray(), False
    for byte in pdf[start:]:
        if not escaped and byte == ord(")"):
            return out.decode()
        escaped = not escaped and byte == ord("\\")
        if not escaped:
            out.append(byte)
    raise AssertionError(f"unterminated /{key}")


def media_box_width(pdf: bytes) -> float:
    x0, _, x1, _ = map(float, re.search(rb"/MediaBox \[ *([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)",
                                        pdf).groups())
    return x1 - x0


@pytest.mark.parametrize("venue, width_in", [(None, 5.5), ("neurips", 5.5), ("icml", 6.75),
                                             ("iclr", 5.5)])
def test_the_pdf_is_the_venues_text_width(tmp_path, venue, width_in):
    if venue is not None:
        figures.set_venue(venue)
    _, pdf = saved_pdf(tmp_path)
    assert media_box_width(pdf) == pytest.approx(width_in * 72, abs=0.5)


def test_the_environment_picks_the_venue_and_a_two_column_venue_has_a_column_width(
        tmp_path, monkeypatch):
    monkeypatch.setenv(figures.VENUE_ENV, "ICML")
    _, pdf = saved_pdf(tmp_path)
    assert media_box_width(pdf) == pytest.approx(6.75 * 72, abs=0.5)
    assert figures.figure_size(0.5, column="half") == pytest.approx((3.25, 1.625))
    assert figures.run_metadata()["venue"] == "icml"   # every sidecar records it
    with figures.paper_style():   # the venue's font sizes too
        assert plt.rcParams["font.size"] == 8 and plt.rcParams["legend.fontsize"] == 6


def test_an_unknown_venue_is_refused_with_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="unknown venue 'nips'.*neurips, icml, iclr"):
        figures.set_venue("nips")
    monkeypatch.setenv(figures.VENUE_ENV, "cvpr1999")
    with pytest.raises(ValueError, match="FA_EVAL_VENUE: unknown venue 'cvpr1999'"):
        figures.figure_size(0.4)


def test_the_pdf_carries_the_sidecars_provenance(tmp_path):
    _, pdf = saved_pdf(tmp_path)
    info = {k: pdf_string(pdf, k) for k in ("Title", "Subject", "Keywords")}
    assert info["Title"] == "03_timeline"
    for said in ("git_commit=abc123", "profile=tiny", "data_fingerprint=f00d", "fa_eval_version=9.9"):
        assert said in info["Subject"]
    assert '"data_fingerprint": "f00d"' in info["Keywords"]
    assert saved_pdf(tmp_path / "again")[1] == pdf   # still byte-stable


def test_one_legend_per_figure_outside_the_data_with_the_rules_labels():
    fig = plot_timeline(SERIES)
    try:
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert len(legends) == 1
        fig.draw_without_rendering()
        box = legends[0].get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
        for text in [box] + [ax.title.get_window_extent() for ax in fig.axes]:
            assert fig.bbox.x0 <= text.x0 and text.x1 <= fig.bbox.x1 + 0.5   # within the page
    finally:
        plt.close(fig)
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert {"Credit Bridge (seed 1)", "State Bridge (seed 1)", "DFA (seed 1)"} <= set(labels)
    assert not any("_BRIDGE" in label for label in labels)
    for label in ("DFA", "Credit Bridge", "State Bridge"):   # one entry per rule
        assert sum(t.startswith(label) for t in labels) == 1, labels
