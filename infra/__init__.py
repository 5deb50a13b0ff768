"""Job submission for seqcls: SageMaker, Vertex AI, schedules, image build and push.

Run the entry points from the repository root as modules (`python -m infra.sagemaker.submit`),
so they share `infra.common`; they depend on the seqcls package only for its hyperparameter
names and parsing, never on torch.
"""
