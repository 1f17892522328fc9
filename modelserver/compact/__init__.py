"""Compact models: the compact architecture, distillation from an ensemble, pruning, and the compress pipeline."""
