"""Serving: `seqcls serve` over HTTP; one module per concern (docs/layout.md).

`serve` (the routes and the payload shapes SageMaker, Vertex and Batch Transform send), `batching` (concurrent
requests sharing forward passes under a token budget) and `hf_inference` (code/inference.py, copied verbatim into
each run for AWS's Hugging Face image, so it imports no seqcls). Nothing is imported here: fastapi and uvicorn are
the `[serve]` extra, loaded only when `seqcls serve` starts.
"""
