"""Saving a run's folder: the artifacts and records (`artifacts`), the model card (`card`) and the ONNX export with
its runtime (`onnxmodel`). Each is imported by name where it is used.
"""
