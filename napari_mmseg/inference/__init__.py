"""Segmenting a scan: sliding-window inference on the model grid and its checks."""
