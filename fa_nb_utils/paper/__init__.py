"""The paper's reproduction: everything the numbered notebooks need beyond the protocol itself.

- `profiles`: the paper, smoke, mnist and tiny profiles; `experiments`, `executors`: the training grid
  and where it runs;
- `audit`, `gain`, `early_stop`, `penalty`, `pitfalls`, `architecture_audit`, `findings`: the
  logic of notebooks 00-06 and their closing sentences;
- `figures`: one style at a venue's sizes, figures and tables with JSON sidecars; `latex`:
  `results/paper/` (the text's macros, Table 1, every table at the text width); `published`:
  the paper's own numbers, quoted; `runner`: the papermill runner behind `make reproduce`.
Not here: the model, the rules, the trainer and the protocol (the package's top level).
"""
