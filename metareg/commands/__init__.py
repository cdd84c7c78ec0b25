"""Sub-commands of the ``metareg`` CLI, one module per larger command."""
