"""What training and evaluation read: the data-set protocol and its two implementations (the
compact feature file, FeatureSet; the feature store, MediaSet), and the batched transforms."""
