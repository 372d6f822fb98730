"""One module per backend, each with the same names (as Keras 3's backend/<name>/):
NAME, INSTALL_HINT, is_available(), unavailable_reason(), create_ops(), warmup()."""
