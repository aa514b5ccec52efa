"""Files on disk, whatever the source: verified downloads, finding a user's clips, decoding audio
and video, the feature store's arrays, and the split files."""
