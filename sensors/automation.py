"""One automation sensor per stream, over its Silver, Gold and warehouse assets.

One sensor, not one per layer: within one evaluation Dagster knows what it is about to request, so an hour's
Silver, Gold and warehouse load are requested together and run as one run instead of three runs a tick
apart. Pause a stream's automation in the UI.
"""

from __future__ import annotations

import dagster as dg

from assets import keys
from assets.spec import StreamSpec

LAYERS = ("silver", "gold", "warehouse")


def automation_sensors(spec: StreamSpec, every_s: int) -> list[dg.AutomationConditionSensorDefinition]:
    return [
        dg.AutomationConditionSensorDefinition(
            name=f"automation_{spec.name}",
            target=dg.AssetSelection.groups(*(keys.group(spec, layer) for layer in LAYERS)),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=every_s,  # MEDALLION_AUTOMATION_EVERY_S (resources/settings.py)
            description=f"Materializes {spec.name} Silver, Gold and warehouse partitions whose parents changed.",
        )
    ]
