"""Inference: sequence sliding-window prediction and mapping back to native space."""
