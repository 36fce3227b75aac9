"""Segmentation stage: a mask from each box (box-prompted segmenter)."""
