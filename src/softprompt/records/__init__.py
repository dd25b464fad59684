"""Typed records of every JSON file softprompt writes, one module per file (or family of files).

`base` (Record, Artifact: strict from_dict, lossless to_dict, schema versions), `metrics` (evaluation numbers),
`run` (run.json, metrics.jsonl), `neighbors`, `geometry`, `transfer` (transfer.json, transfer_init.json),
`readouts` (importance.json, describe.json, results.json's readouts), `ablations`, `results` (results.json),
`files` (bookkeeping: inputs, caches, baselines.json, study_config.json), `registry` (file name -> record).
A foundation layer: it imports nothing of softprompt but `errors` and `io`.
"""
