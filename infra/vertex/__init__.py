"""Vertex AI custom jobs for seqcls (google-cloud-aiplatform `CustomJob`)."""
