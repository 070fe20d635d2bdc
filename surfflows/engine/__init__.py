"""The CHGNet engine: loading models, graphs, batched relaxation, fine-tuning, DIRECT features.
Importing this package loads no torch; its modules that need torch import it."""
