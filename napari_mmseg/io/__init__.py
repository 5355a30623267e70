"""Reading and writing scans and labels: formats, geometry, datasets, files written whole."""
