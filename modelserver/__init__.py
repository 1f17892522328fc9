"""The model server: datasets, ensembles, compact models, distillation, pruning, image generation."""
