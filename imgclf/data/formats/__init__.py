"""One module per raw data format: how the download stage fetches it into raw_dir and how preprocess reads it back."""
