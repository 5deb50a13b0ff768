"""seqcls: fine-tune a BERT-family sequence classifier as a batch job."""

__version__ = "0.1.0"
