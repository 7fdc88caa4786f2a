"""Does self-correction help? A Duo (uniform-state) model vs a masked model of the same size and training budget."""
