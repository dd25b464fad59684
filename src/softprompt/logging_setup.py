"""Quiet third-party libraries for command-line and worker processes: no transformers chatter or hub progress bars."""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Errors only from transformers, no download bars, no tokenizer fork warnings, no UserWarnings."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)
