"""Training a network on unpaired CT and MR: patches, augmentation, the training loop."""
