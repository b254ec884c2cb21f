"""Site configuration: models, loading with line numbers, validation and address overlays."""
