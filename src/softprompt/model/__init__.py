"""The frozen language model and the prompt put before its input.

- `backbones`: loading a frozen causal LM (offline aliases, the Hub, folders), its compute dtype and revision;
- `prompt`: the `SoftPrompt` matrix, its init, its scale (`embedding_scale`) and its file;
- `reparam`: the prompt computed through an MLP (`PromptEncoder`) or projected on tokens (`HardPromptEncoder`, PEZ).
"""
