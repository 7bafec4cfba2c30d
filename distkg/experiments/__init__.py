"""The experiment layer: what runs the parts of an experiment and writes its report.

- parts.py: run a part (a run folder and its work) unless it is finished; claims between processes
  (claims.py) so that several processes share one set of folders; resume is the part's own.
- pipeline.py: ``distkg run`` (teacher, LLM teacher, students of one config, evaluated and reported).
- grid.py: ``distkg reproduce`` (the paper's grid of teachers and students over datasets, backbones,
  methods, dims and seeds); jobs.py: the grid split over one-thread worker processes.
- report.py: every report (report.md of a run, the grid's tables, costs and plots).

It sits above distillation, training and the runtime (it calls them) and below the CLI.
"""
