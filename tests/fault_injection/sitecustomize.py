"""Loaded by every Python process of a test run that puts this folder on PYTHONPATH: makes the rank
named in FAULT_INJECT_RANK raise on its third training batch, as a real bug or bad node would."""

import os

if os.environ.get("FAULT_INJECT_RANK") and os.environ.get("RANK") == os.environ["FAULT_INJECT_RANK"]:
    import seqcls.train

    _collate = seqcls.train.collate
    _calls = {"n": 0}

    def _failing_collate(*args, **kwargs):
        _calls["n"] += 1
        if _calls["n"] == 3:
            raise RuntimeError("injected fault on this rank")
        return _collate(*args, **kwargs)

    seqcls.train.collate = _failing_collate
