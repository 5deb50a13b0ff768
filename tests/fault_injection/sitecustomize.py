"""Loaded by every Python process of a test run that puts this folder on PYTHONPATH: makes the rank
named in FAULT_INJECT_RANK raise, as a real bug or bad node would: on its third training batch, or with
FAULT_INJECT_STAGE=tokenize while it tokenizes the data."""

import os

if os.environ.get("FAULT_INJECT_RANK") and os.environ.get("RANK") == os.environ["FAULT_INJECT_RANK"]:
    if os.environ.get("FAULT_INJECT_STAGE") == "tokenize":
        import seqcls.data.encoding

        def _failing_tokenize(*args, **kwargs):
            raise RuntimeError("injected fault in tokenization")

        seqcls.data.encoding.tokenize = _failing_tokenize
    else:
        import seqcls.training.train

        _collate = seqcls.training.train.collate
        _calls = {"n": 0}

        def _failing_collate(*args, **kwargs):
            _calls["n"] += 1
            if _calls["n"] == 3:
                raise RuntimeError("injected fault on this rank")
            return _collate(*args, **kwargs)

        seqcls.training.train.collate = _failing_collate
