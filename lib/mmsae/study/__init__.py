"""Stage 6, the study: the methods compared and their training/reuse jobs, sweeps, run
folders and profiles, tables, figures and the paper's reference numbers."""
