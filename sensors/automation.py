"""One automation sensor per stream and layer, so a layer can be paused alone from the UI."""

from __future__ import annotations

import dagster as dg

from assets import keys
from assets.spec import StreamSpec

LAYERS = ("silver", "gold", "warehouse")


def automation_sensors(spec: StreamSpec) -> list[dg.AutomationConditionSensorDefinition]:
    return [
        dg.AutomationConditionSensorDefinition(
            name=f"automation_{spec.name}_{layer}",
            target=dg.AssetSelection.groups(keys.group(spec, layer)),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=5,
            description=f"Materializes {spec.name} {layer} partitions whose parents changed.",
        )
        for layer in LAYERS
    ]
