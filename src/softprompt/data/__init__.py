"""A task's examples as the model reads them (the tasks themselves are `softprompt.tasks`).

- `chat`: the prompt format, a plain template or the model's chat template;
- `batching`: tokenized rows, truncation, padding, batches;
- `inputs`: the content digests of a task's definition and data files (a run's inputs).
"""
