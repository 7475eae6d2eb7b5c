"""The paper's reproduction: everything the numbered notebooks need beyond the protocol itself.

- `profiles`: the paper and smoke profiles (every size a notebook uses);
- `experiments`: the training grid (rules x seeds, frozen baselines, penalty runs);
- `audit`, `early_stop`, `penalty`, `pitfalls`: the logic of notebooks 00-05;
- `figures`: one paper style, figures as PDF + 300-dpi PNG and tables as CSV + LaTeX, each with a
  JSON sidecar of its numbers and metadata;
- `published`: the paper's own numbers, quoted (never presented as computed here);
- `runner`: the papermill runner behind `make reproduce`.
Not here: the model, the rules, the trainer and the protocol (the package's top level).
"""
