"""The networks (the paper's FCN and its multi-modal variants) and their weights files."""
