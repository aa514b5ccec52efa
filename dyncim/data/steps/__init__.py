"""The pipeline's data steps for the store sources, as the rules run them: bring the raw files in,
then build the feature store."""
