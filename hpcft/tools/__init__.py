"""Tools around the flow: ``hpcft config`` (accelerate YAML) and ``hpcft doctor`` (its probe imports torch)."""
