"""Training phase (train_scratch, extract_features, train_transfer stages): models, fitting and what they share."""
