"""SageMaker training jobs for seqcls (SDK v3, `sagemaker.train.ModelTrainer`)."""
