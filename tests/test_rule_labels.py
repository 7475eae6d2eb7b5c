"""What tables and figures print for a rule is the rule's own `label`, for built-in rules and a
caller's alike; a rule that sets none prints its name in capitals, never its parent's label.

Two tiny runs of DFA subclasses registered here (one labelled, one not), audited as notebook 02
does and drawn as notebook 03's timeline.
"""
import pytest
import torch

from fa_nb_utils.paper import audit
from fa_nb_utils.paper import early_stop as es
from fa_nb_utils.paper.experiments import profile_data, run_grid
from fa_nb_utils.paper.profiles import get_profile
from fa_nb_utils.rules import DFA, RULES, register_rule, rule_label

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    class LabelledDFA(DFA):
        name, label = "labelled_dfa_test", "Labelled DFA"

    class PlainDFA(DFA):
        name = "plain_dfa_test"

    for cls in (LabelledDFA, PlainDFA):
        register_rule(cls)
    threads = torch.get_num_threads()
    try:
        data = profile_data(TINY, device="cpu")
        yield data, run_grid(TINY, tmp_path_factory.mktemp("results"),
                             rules=[LabelledDFA.name, PlainDFA.name], seeds=[42], frozen=False,
                             data=data, executor="inprocess", threads=1, progress=False)
    finally:
        torch.set_num_threads(threads)
        for cls in (LabelledDFA, PlainDFA):
            RULES.pop(cls.name, None)


def test_the_builtin_rules_print_their_labels():
    assert {name: rule_label(name) for name in ("bp", "dfa", "fa", "ep", "state_bridge",
                                                "credit_bridge")} == {
        "bp": "BP", "dfa": "DFA", "fa": "FA", "ep": "EP", "state_bridge": "State Bridge",
        "credit_bridge": "Credit Bridge"}
    assert rule_label("never_registered") == "NEVER_REGISTERED"   # an old run's rule, not imported


def test_the_audit_table_and_the_timeline_print_a_rules_own_label(records):
    data, runs = records
    table = audit.audit_runs(runs, data, profile=TINY)
    assert {r["rule_key"]: r["rule"] for r in table.rows} == {
        "labelled_dfa_test": "Labelled DFA", "plain_dfa_test": "PLAIN_DFA_TEST"}
    assert [a.report.method_name for a in table.audits] == ["Labelled DFA", "PLAIN_DFA_TEST"]
    fig = es.plot_timeline(es.timeline(runs))
    try:
        assert {"Labelled DFA (seed 42)", "PLAIN_DFA_TEST (seed 42)"} <= {
            t.get_text() for t in fig.legends[0].get_texts()}
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
