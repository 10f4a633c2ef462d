"""Built-in dataset specs; importing this package registers them."""
