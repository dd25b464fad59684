"""A run's directory and what it holds.

- `directory`: run.json's files, `load_run` and `Run` (its prompt checked against run.json), `observed_status`,
  a `run:` init's source prompt;
- `state`: `run_state`, whether a directory may be reused for a config (absent / complete / resumable / conflict);
- `checkpoint`: the training checkpoint's file (save, load);
- `baselines`: what each baseline is, the untrained ones' evaluation and a trained one's config
  (`softprompt.training.baseline_runs` trains them).
"""
