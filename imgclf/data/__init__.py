"""Data phase (download, preprocess stages): sources, image decoding, the split and shards, tf.data, augmentation."""
