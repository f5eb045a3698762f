"""The streams this platform runs. Adding a stream = adding its spec to `STREAMS`."""

from assets.streams.ads import ADS
from assets.streams.iot import IOT

STREAMS = (IOT, ADS)
