"""pandera (polars backend) contracts per stream and layer, plus the generic row-splitting helper."""
