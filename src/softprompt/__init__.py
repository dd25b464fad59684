"""softprompt: train, evaluate and interpret soft prompts on frozen causal language models."""

__version__ = "0.1.0"
