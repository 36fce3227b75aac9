"""Scorers shared by the evaluation commands and the training loops."""
