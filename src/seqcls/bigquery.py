"""A BigQuery table as a data channel: `bq://project.dataset.table`.

Vertex passes a managed dataset this way when AIP_DATA_FORMAT is `bigquery` ("Use managed datasets",
https://cloud.google.com/vertex-ai/docs/training/using-managed-datasets: "the data URI values refer to BigQuery
URIs (e.g. bq://project.dataset.table)"), and a user may pass one with --train/--validation/--test.

google-cloud-bigquery reads the table: `tables.get` for its schema and row count, then `tabledata.list` page by
page (RowIterator.to_arrow_iterable over REST). The pages stream into one local Parquet file, which the data stage
reads like any other file: the same column choice, checks and manifest record, and memory bounded by one page
while the rows travel. The Storage Read API (gRPC, google-cloud-bigquery-storage) is not used: the REST pages need
no further dependency in the image, and a classifier's labelled text is a small table.

Credentials are Application Default Credentials (on Vertex, the job's service account); BIGQUERY_EMULATOR_HOST,
the client library's own variable (google/cloud/bigquery/_helpers.py), points it at another endpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import extras, logs
from .errors import DataError, SettingsError

SCHEME = "bq://"
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class Table:
    """One table, as its URI names it; a project id may hold dots and a colon (domain-scoped: example.com:proj)."""

    project: str
    dataset: str
    name: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.project}.{self.dataset}.{self.name}"

    @property
    def table_id(self) -> str:
        return f"{self.project}.{self.dataset}.{self.name}"


def is_uri(value: str) -> bool:
    return value.startswith(SCHEME)


def parse(uri: str) -> Table:
    """`bq://project.dataset.table` (dataset and table names hold no dots, so they are the last two parts)."""
    parts = uri[len(SCHEME):].rsplit(".", 2)
    if len(parts) != 3 or not all(parts) or "/" in uri[len(SCHEME):]:
        raise SettingsError(f"{uri} is not a BigQuery table: expected bq://project.dataset.table")
    return Table(*parts)


def _client(table: Table):
    extras.require("google.cloud.bigquery", f"the channel {table}")
    from google.cloud import bigquery

    return bigquery.Client(project=table.project)


def _failure(table: Table, err: Exception) -> DataError:
    """One line naming the table: what BigQuery answered, and what to check."""
    from google.api_core import exceptions

    from google.auth.exceptions import DefaultCredentialsError

    answer = " ".join(str(getattr(err, "message", "") or err).split())[:300]
    if isinstance(err, DefaultCredentialsError):
        return DataError(f"{table}: no Google credentials (Application Default Credentials: the job's service "
                         f"account, GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth application-default login`): {answer}")
    if isinstance(err, exceptions.NotFound):
        return DataError(f"{table}: no such table (check the project, dataset and table names): {answer}")
    if isinstance(err, (exceptions.Forbidden, exceptions.Unauthorized)):
        return DataError(f"{table}: read denied (the job's credentials need bigquery.tables.get and "
                         f"bigquery.tables.getData on it, as in roles/bigquery.dataViewer): {answer}")
    return DataError(f"{table} could not be read: {type(err).__name__}: {answer}")


def export(table: Table, folder: Path, channel: str) -> Path:
    """Write every row of `table` to `folder`/<name>.parquet, page by page, logging progress; returns the file."""
    import pyarrow.parquet as pq
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    target = folder / f"{table.name}.parquet"
    writer, written, last = None, 0, time.monotonic()
    try:
        client = _client(table)
        resource = client.get_table(table.table_id)
        logs.event("bigquery_read", f"{channel}: reading {resource.num_rows} row(s) from {table}", channel=channel,
                   table=str(table), rows=resource.num_rows)
        for batch in client.list_rows(resource).to_arrow_iterable():
            writer = writer or pq.ParquetWriter(target, batch.schema)
            writer.write_batch(batch)
            written += batch.num_rows
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                logs.event("bigquery_progress", f"{channel}: {written} of {resource.num_rows} row(s) from {table}",
                           channel=channel, table=str(table), rows=written, total=resource.num_rows)
    except (GoogleAPIError, GoogleAuthError) as err:
        raise _failure(table, err) from None
    finally:
        if writer is not None:
            writer.close()
    if not written:
        raise DataError(f"{channel} channel {table} has no rows")
    return target
