"""EventBridge Scheduler -> Step Functions -> SageMaker createTrainingJob.sync."""
