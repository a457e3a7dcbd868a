"""Blob trigger (Event Grid source, as Flex Consumption requires): a dropped file starts its export.

The binding hands over a blob client, not the content: a segment file can be gigabytes, and
plan_export streams it itself.
"""

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

from shared.core.resource_names import DROPS_CONTAINER, STORAGE_CONNECTION

bp = func.Blueprint()


@bp.function_name("segment_dropped")
@bp.blob_trigger(
    arg_name="client",
    path=f"{DROPS_CONTAINER}/{{name}}",
    connection=STORAGE_CONNECTION,
    source=func.BlobSource.EVENT_GRID,
)
def segment_dropped(client: blob.BlobClient) -> None:
    """Idempotent per blob content: a repeated event or an unchanged re-upload starts one run."""
    from shared.adapters.services import app_services
    from shared.pipeline.start import blob_version, handle_drop

    properties = client.get_blob_properties()
    version = blob_version(properties.content_settings.content_md5, properties.etag)
    handle_drop(app_services(), client.container_name, client.blob_name, properties.size, version)
