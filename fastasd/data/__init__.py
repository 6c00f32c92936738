"""Data layer: DCASE layouts, audio loading, class labels, datasets, synthetic machine sounds."""
