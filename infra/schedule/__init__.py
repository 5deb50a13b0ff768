"""Scheduled retraining: EventBridge Scheduler -> Step Functions on AWS, Cloud Scheduler on Google Cloud."""
