"""Built-in metareg plugins. Each module is one plugin, loaded through the "metareg" entry-point group exactly like a third-party package."""
