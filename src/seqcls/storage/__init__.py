"""Storage: publish a run to s3://, gs:// or a path with the manifest written last; fetch it back verified.

The only package that talks to object storage. A consumer trusts a run folder only when its `manifest.json` exists,
and that object is written after every file has been uploaded and checked against the server's own size and
checksum, and never over an existing manifest. So a crash, a killed job or a failed upload leaves a folder without a
manifest (ignored), never a half model that looks finished, and a rerun with the same run id cannot clobber a
published model. Credentials come from the default chains (AWS: env, profile, role; GCP: ADC) and are never logged.

One module per concern: `base` (the backend interface and records), `s3`, `gcs`, `local` (the backends), `stores`
(opening one by scheme, reading latest.json), `publishing` and `fetching`.
"""

from .base import LATEST, MANIFEST, Current, Gate, Options, Published
from .fetching import fetch
from .publishing import preflight, preflight_run, publish, publish_run, replace
from .stores import open_store

__all__ = ["LATEST", "MANIFEST", "Current", "Gate", "Options", "Published", "fetch", "open_store", "preflight",
           "preflight_run", "publish", "publish_run", "replace"]
