"""OpenLineage datasets of the flow, reported by the DAG tasks through Airflow's OpenLineage provider.

A task adds the datasets it read and wrote to its own inlets and outlets once its step succeeded;
when it ends, the provider's listener puts them in the task's COMPLETE run event, which goes to the
transport the settings name (`openlineage_transport`; default a JSON-lines file under the home).
This is the provider's fallback for operators without an extractor (TaskFlow tasks), and takes
OpenLineage `Dataset`s as they are.

Datasets are named after what they are, so the same lineage links up in any backend:

| what | namespace | name |
| --- | --- | --- |
| checkpoint | its store: `s3://BUCKET`, or `file` | the object key, or the absolute path |
| step output (artifact) | `slimline://artifacts` | its content-addressed key |
| model version | `mlflow://HOST[:PORT][PATH]` of the tracking URI | `NAME/VERSION` |
| engine | `slimline://engines` | `TARGET/DIGEST` |
| release, fleet | the fleet channel's store | `…/fleets/FLEET/releases/NNNNNN`, `…/fleets/FLEET` |

Checkpoints carry their content digest and fleets their current release number as the standard
`version` dataset facet. Outside a DAG task (`slimline run`, the CLI) nothing here is called.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.fleet.channel import open_channel
from tasks.flow.fleet_release import Conclusion, Published
from tasks.flow.pipeline import Prepared, VariantOutcome
from tasks.intake.checkpoints import VerifiedCheckpoint
from tasks.registry.engines import EngineOutcome, EngineRecord
from tasks.report.summary import FailedVariant, Summary

ARTIFACTS_NAMESPACE = "slimline://artifacts"
ENGINES_NAMESPACE = "slimline://engines"


class LineageDataset(BaseModel, frozen=True):
    namespace: str
    name: str
    version: str | None = None  # the dataset's `version` facet


def located(uri: str, version: str | None = None) -> LineageDataset:
    """An object in a store (`s3://` or `file://`), named by OpenLineage's naming spec."""
    from openlineage.client.naming.dataset import S3, LocalFileSystem

    parts = urlsplit(uri.rstrip("/"))
    naming = (
        S3(bucket_name=parts.netloc, object_key=parts.path.lstrip("/"))
        if parts.scheme == "s3"
        else LocalFileSystem(path=str(PurePosixPath(parts.path)))
    )
    return LineageDataset(namespace=naming.get_namespace(), name=naming.get_name(), version=version)


def checkpoint(verified: VerifiedCheckpoint) -> LineageDataset:
    return located(verified.uri, verified.digest)


def artifact(key: str) -> LineageDataset:
    return LineageDataset(namespace=ARTIFACTS_NAMESPACE, name=key)


def registry_namespace(tracking_uri: str) -> str:
    """The registry's namespace: its host and path, never its credentials or query."""
    parts = urlsplit(tracking_uri)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    path = "/" + parts.path.lstrip("/") if parts.path else ""  # sqlite:////abs/path has an empty host
    return f"mlflow://{host}{port}{path}"


def model_version(settings: Settings, label: str) -> LineageDataset:
    return LineageDataset(namespace=registry_namespace(settings.tracking_uri), name=label)


def engine(record: EngineRecord) -> LineageDataset:
    return LineageDataset(namespace=ENGINES_NAMESPACE, name=f"{record.target}/{record.digest}")


def release(settings: Settings, fleet: str, number: int) -> LineageDataset:
    channel = open_channel(settings, fleet)
    return located(f"{channel.store.uri}/{channel.release_prefix(number)}", str(number))


def fleet(settings: Settings, name: str, number: int) -> LineageDataset:
    """The fleet's folder in the channel, which its devices poll; `version` is its release."""
    channel = open_channel(settings, name)
    return located(f"{channel.store.uri}/{channel.prefix}", str(number))


def report(inputs: Iterable[LineageDataset], outputs: Iterable[LineageDataset]) -> None:
    """Add the datasets to the running task's inlets and outlets (new lists: in `airflow dags test`
    the task is a shallow copy of the DAG's, whose lists must stay as parsed)."""
    from airflow.sdk import get_current_context

    task = get_current_context()["ti"].task
    task.inlets = _merged(task.inlets, inputs)
    task.outlets = _merged(task.outlets, outputs)


def _merged(present: Sequence[Any], added: Iterable[LineageDataset]) -> list[Any]:
    """`present` (Airflow assets stay: they drive scheduling) plus the datasets not yet in it, so a
    task that reports twice (a retry in the same process) lists each once."""
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import dataset_version_dataset
    from openlineage.client.generated.base import DatasetFacet

    merged = list(present)
    seen = {(d.namespace, d.name) for d in merged if isinstance(d, Dataset)}
    for d in added:
        if (d.namespace, d.name) not in seen:
            facets: dict[str, DatasetFacet] = {}
            if d.version:
                facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                    datasetVersion=d.version
                )
            merged.append(Dataset(namespace=d.namespace, name=d.name, facets=facets))
            seen.add((d.namespace, d.name))
    return merged


# What each DAG task reports, from the records its flow function returned.


def variant_compressed(prepared: Prepared, outcome: VariantOutcome) -> None:
    """The checkpoint and the data split in, the variant's model (its last step's output) out."""
    report([checkpoint(prepared.checkpoint), artifact(prepared.split.key)], [artifact(outcome.model_key)])


def versions_registered(
    settings: Settings, summary: Summary, outcomes: Iterable[VariantOutcome | FailedVariant]
) -> None:
    """The variants that passed in, the versions registered (or found registered) for them out."""
    keys = {o.variant: o.model_key for o in outcomes if isinstance(o, VariantOutcome)}
    rows = [row for row in summary.rows if row.version]
    report(
        [artifact(keys[row.name]) for row in rows],
        [model_version(settings, f"{summary.registered_model}/{row.version}") for row in rows],
    )


def engine_built(settings: Settings, outcome: EngineOutcome) -> None:
    """A version in, its engine for one target out (nothing when skipped or failed)."""
    if outcome.record is not None:
        report([model_version(settings, outcome.model_version)], [engine(outcome.record)])


def release_published(settings: Settings, published: Published) -> None:
    """The version and the engines bundled for the fleet's targets in, the signed release out."""
    report(
        [model_version(settings, published.model_version), *map(engine, published.engines)],
        [release(settings, published.fleet, published.release)],
    )


def fleet_concluded(settings: Settings, conclusion: Conclusion) -> None:
    """A release rolled out through every wave in, the fleet now running it out."""
    if conclusion.state == "succeeded":
        report(
            [release(settings, conclusion.fleet, conclusion.release)],
            [fleet(settings, conclusion.fleet, conclusion.release)],
        )
