"""From raw media to features: the extraction driver and its recipes (spectrograms, optical flow,
frozen pretrained image and text encoders)."""
